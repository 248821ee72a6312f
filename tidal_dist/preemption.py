"""SIGTERM / SIGUSR1 (SLURM's pre-timeout signal, a cluster's preemption notice) handling.

The handler only sets a flag. At each step boundary the ranks agree on it with one tiny
all-reduce (MAX), so they all stop after the same step, save one checkpoint and exit with
EXIT_PREEMPTED, which launch/slurm/run.sbatch requeues on.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"

_requested = False


class Preempted(Exception):
    """Raised after the checkpoint is saved; the CLI turns it into EXIT_PREEMPTED."""


def _handler(signum, frame):  # noqa: ARG001
    global _requested
    _requested = True


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _handler)


def request() -> None:
    """For tests and for code that wants a clean stop at the next step boundary."""
    global _requested
    _requested = True


def clear() -> None:
    global _requested
    _requested = False


def agreed(device: torch.device) -> bool:
    """True on every rank if any rank got the signal (a collective when distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _requested
    flag = torch.tensor([1 if _requested else 0], device=device, dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
