"""Live metrics of a run: the metrics.jsonl stream, Accelerate's trackers, progress output.

    stream.py    RUN_DIR/metrics.jsonl (rank 0, append-only) and its reader
    trackers.py  run.trackers (tensorboard, wandb) through accelerate.tracking
    progress.py  tqdm bars on a terminal, plain lines with rate and ETA elsewhere
    run.py       Telemetry: one call per event feeds all of the above
"""

from tidal_dist.telemetry.progress import progress, use_bars
from tidal_dist.telemetry.run import Telemetry
from tidal_dist.telemetry.stream import METRICS_NAME, read_records
from tidal_dist.telemetry.trackers import check_trackers

__all__ = ["METRICS_NAME", "Telemetry", "check_trackers", "progress", "read_records", "use_bars"]
