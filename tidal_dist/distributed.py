"""Rank arithmetic as pure functions of the launcher's environment variables.

torchrun, `accelerate launch` and SLURM (through launch/slurm/*.sbatch, which exports the torchrun
variables) all set RANK / WORLD_SIZE / LOCAL_RANK. A plain `python -m tidal_dist` has none of them
and is rank 0 of 1. Reading the environment (rather than asking torch.distributed) lets the data
readers and file naming work before, and without, a process group.
"""

from __future__ import annotations

import os


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def world_size() -> int:
    return _env_int(("WORLD_SIZE",), 1)


def rank() -> int:
    return _env_int(("RANK",), 0)


def local_rank() -> int:
    return _env_int(("LOCAL_RANK",), 0)


def is_main_process() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1
