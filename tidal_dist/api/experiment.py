"""Running an experiment inside a Python process (a notebook, a script): the same code path as
`tidal-dist run` / `train`, which call `execute` too.

    cfg = load_config("configs/fashion_mnist_demo.yaml", ["run.dir=runs/nb"], train={"epochs": 2})
    run = run_experiment(cfg)         # a Run (api/runs.py); run.status: done, waiting_for_labels...

What differs from the command line is how the process is left: the stop-signal handlers that a
run installs (job/preemption.py) are taken down when it returns, so the notebook's own Ctrl-C
works again afterwards, and a Ctrl-C ("Interrupt kernel") during the run stops it at the next
step boundary with a checkpoint, then raises KeyboardInterrupt. Bad input raises UserError (its
message names the key or file); running the same config again resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tidal_dist.config import Config, load_config as _load_config
from tidal_dist.job import preemption

COMMANDS = ("run", "train")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                **sections: Mapping[str, Any]) -> Config:
    """A checked Config: the YAML file (optional), then `section.key=value` overrides, then
    keyword sections (`train={"epochs": 2}`), each value checked against its field's type."""
    from tidal_dist.config import apply_dict, validate

    cfg = _load_config(path, list(overrides))
    if sections:
        apply_dict(cfg, {name: dict(values) if isinstance(values, Mapping) else values
                         for name, values in sections.items()}, "load_config(...) keyword arguments")
        validate(cfg)
    return cfg


def execute(cfg: Config, command: str = "run", in_process: bool = True) -> int:
    """Run `command` on `cfg`; the exit code of `tidal-dist COMMAND` (0 done, 3 waiting for
    labels, 75 stopped...). in_process (the Python API): signal handlers restored afterwards, a
    SIGINT stop raised as KeyboardInterrupt. The CLI passes False: the process ends right after."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    from tidal_dist.cycle.lifecycle import run_command
    from tidal_dist.cycle.loop import run_main, train_main

    def body() -> int:
        return run_main(cfg) if command == "run" else train_main(cfg)

    if not in_process:
        return run_command(cfg, command, body)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run an experiment from the main thread: only it can receive the stop "
                           "signals that checkpoint a run")
    with preemption.handlers_restored():
        code = run_command(cfg, command, body)
        interrupted = code == preemption.EXIT_PREEMPTED and preemption.interrupted_by_user()
    if interrupted:
        raise KeyboardInterrupt(f"run stopped with a checkpoint in {cfg.run.dir}; run the same "
                                f"config again to resume")
    return code


def run_experiment(cfg: Config):
    """Start or resume the active-learning experiment of cfg.run.dir; returns its Run."""
    from tidal_dist.api.runs import Run

    execute(cfg, "run")
    return Run(cfg.run.dir)


def train_once(cfg: Config):
    """`tidal-dist train`: one training cycle on the initial labeled set; returns its Run."""
    from tidal_dist.api.runs import Run

    execute(cfg, "train")
    return Run(cfg.run.dir)
