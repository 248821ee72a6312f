"""RUN_DIR/metrics.jsonl: one JSON object per line, appended by rank 0 as the run goes.

Every record has `time` (unix seconds) and `event`:

    start   the process (re)started: committed_cycles, world_size
    step    every run.log_every steps (rank 0's batch): cycle, epoch, step, loss parts, lr, samples_per_s
    epoch   cycle, epoch, loss parts (means over the epoch, all ranks), lr, samples, seconds, samples_per_s
    phase   cycle, phase (evaluate | score | select | commit), seconds, items, items_per_s, and
            the phase's result (evaluate: accuracy)
    cycle   cycle, labeled, accuracy, seconds per phase (what the cycle's metrics.json holds)

Epochs and cycles count from 0. A run resumed after a crash appends again: epochs redone after
the last checkpoint appear twice, the later record being the one that counts. A line torn by a
kill is skipped by `read_records`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"


def _clean(value: Any) -> Any:
    """JSON has no NaN or inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsStream:
    """Append-only JSONL writer; each record is flushed as one line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        self.file = open(self.path, "a", encoding="utf-8")
        if torn:  # a kill mid-line: end that line so the next record starts clean
            self.file.write("\n")

    def write(self, event: str, **fields: Any) -> dict:
        record = {"time": round(time.time(), 3), "event": event, **_clean(fields)}
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.file.flush()
        return record

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def read_records(path: Path) -> list[dict]:
    """Every complete record of a metrics.jsonl, in order (torn lines skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "event" in record:
                records.append(record)
    return records
