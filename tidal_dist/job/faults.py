"""Crash points for the resume tests: `TIDAL_DIST_CRASH_AT=after_score:1` makes the process that
reaches that point in cycle 1 kill itself with SIGKILL (append `@rank1` to pick one rank).
`TIDAL_DIST_CRASH_AT=epoch:2:3` kills at step 3 of epoch 2 (0-based) of any cycle, and
`raise_epoch:2:3` raises an exception there instead (a rank failing with a Python error).

`TIDAL_DIST_CRASH_AT=stall_in_checkpoint:1` makes a process hang inside every checkpoint save of
cycle 1 (after its RNG file is written), to test the stop deadline; `slow_inference` makes every
evaluation / scoring batch take half a second longer (a window to signal a run in those phases);
`sigterm_epoch:1:2` (or `sigusr1_epoch:1:2`, `sigint_epoch:1:2`: Ctrl-C) makes the process send
itself that signal at step 2 of epoch 1: a stop signal at a known point, however fast the run.

Unset (always, outside tests) it does nothing. A real kill -9 is the point: no handler, no
cleanup, no flushed buffers beyond what the code already committed.
"""

from __future__ import annotations

import os
import signal
import time


def _spec() -> tuple[str, str] | None:
    raw = os.environ.get("TIDAL_DIST_CRASH_AT")
    if not raw:
        return None
    point, _, who = raw.partition("@")
    if who and who != f"rank{os.environ.get('RANK', '0')}":
        return None
    name, _, arg = point.partition(":")
    return name, arg


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_crash(point: str, cycle: int) -> None:
    spec = _spec()
    if spec is not None and spec == (point, str(cycle)):
        _die()


def maybe_stall(point: str, cycle_folder: str) -> None:
    spec = _spec()
    if spec is not None and spec[0] == f"stall_{point}" and cycle_folder == f"cycle_{int(spec[1]):04d}":
        while True:  # what a hung filesystem or a stuck collective looks like from here
            time.sleep(1)


def maybe_slow(point: str) -> None:
    spec = _spec()
    if spec is not None and spec[0] == f"slow_{point}":
        time.sleep(0.5)


def maybe_crash_in_epoch(epoch: int, step: int) -> None:
    spec = _spec()
    if spec is None or spec[1] != f"{epoch}:{step}":
        return
    if spec[0] == "epoch":
        _die()
    if spec[0] == "raise_epoch":
        raise RuntimeError(f"injected failure at epoch {epoch}, step {step}")
    sent = {"sigterm_epoch": signal.SIGTERM, "sigusr1_epoch": signal.SIGUSR1,
            "sigint_epoch": signal.SIGINT}.get(spec[0])
    if sent is not None:
        os.kill(os.getpid(), sent)
