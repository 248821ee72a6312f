"""Accelerate's experiment trackers (run.trackers), fed from the metrics.jsonl records on rank 0.

We build the tracker objects ourselves (accelerate.tracking's classes) instead of through
`Accelerator(log_with=...)`: the run directory is only known, and checked, after the Accelerator
exists, and a sweep runs several runs in one process.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tidal_dist.job.errors import UserError

# tracker name -> the package it needs
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
INSTALL_HINT = {"tensorboard": "pip install 'tidal_dist[tensorboard]'", "wandb": "pip install wandb"}


def check_trackers(names: list[str]) -> None:
    """Before anything is written: every requested tracker's package is importable."""
    for name in names:
        package = PACKAGES.get(name)
        if package is None:
            raise UserError(f"config key 'run.trackers': unknown tracker '{name}'; "
                            f"choose from {', '.join(PACKAGES)}")
        if importlib.util.find_spec(package) is None:
            raise UserError(f"config key 'run.trackers': '{name}' needs the {package} package, "
                            f"which is not installed ({INSTALL_HINT[name]})")


def open_trackers(names: list[str], run_dir: Path, config: dict[str, Any]) -> list:
    """Started trackers: tensorboard logs to RUN_DIR/tensorboard (the resolved config as hparams),
    wandb to project tidal_dist with the run directory's name and the resolved config."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    check_trackers(names)
    trackers = []
    for name in names:
        if name == "tensorboard":
            tracker = TensorBoardTracker("tensorboard", str(run_dir))
        else:
            tracker = WandBTracker("tidal_dist", name=Path(run_dir).name, dir=str(run_dir),
                                   config=config)
        tracker.start()
        if name == "tensorboard":  # the resolved config in the HParams tab (W&B has it above)
            tracker.store_init_configuration(hparams(config))
        trackers.append(tracker)
    return trackers


def hparams(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The flat config as TensorBoard's hparams take it: scalars as they are, anything else
    (lists, None) as its YAML text."""
    import yaml

    out = {}
    for key, value in config.items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    return out


def log_to(trackers: list, values: dict[str, float], step: int) -> None:
    scalars = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for tracker in trackers:
        tracker.log(scalars, step=step)


def finish(trackers: list) -> None:
    for tracker in trackers:
        tracker.finish()
