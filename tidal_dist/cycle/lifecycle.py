"""How `tidal-dist run` and `train` start and end, on every rank.

    start:  stop signals handled (preemption.install) -> is the run dir this run's (config.yaml
            absent or equal)? -> rank 0 locks it (job/rundir_lock.py; another live launch there:
            exit 2 naming it) -> the config checked against the dataset and the disk (plan.py),
            before anything is written (a new run dir is locked after this check) -> the
            command itself (loop.run_main / loop.train_main),
            which writes config.yaml and calls outcome.running()
    end:    how the command ended becomes the recorded outcome (outcome.py) and the exit code:

        returned 0                   done                 0
        UserError, full disk         bad_input            2   one line naming the key or path
        LabelsPending                waiting_for_labels   3
        Preempted                    preempted            75  checkpoint saved
        anything else                failed               1   traceback kept (a bug to report)
        ... after a stop request     preempted            75  (a peer that stopped first broke
                                                               the collective; state is intact)

Ranks leave together after a clean ending (one barrier), so a launcher that kills the remaining
tasks when the first one exits (srun --kill-on-bad-exit) cannot cut rank 0's record short.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from tidal_dist.config import RUN_CONFIG_NAME, Config, bind_run_dir, holds_results
from tidal_dist.cycle.oracle import LabelsPending
from tidal_dist.job import distributed, outcome, preemption, rundir_lock
from tidal_dist.job.errors import UserError

# Errors of the output location, not of the program: reported as bad input (exit 2).
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.EFBIG})
FULL_BELOW_BYTES = 1 << 20  # a filesystem with less free than this after a write error is "full"

def _say(command: str, text: str) -> None:
    if distributed.rank() == 0:
        print(f"tidal-dist {command}: {text}", flush=True)


def output_problem(exc: BaseException, run_dir: Path) -> str | None:
    """A message if `exc` is the output location failing (full, read-only, not permitted)."""
    if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
        where = f"'{exc.filename}'" if exc.filename else f"run.dir '{run_dir}'"
        return f"cannot write {where}: {os.strerror(exc.errno)}"
    # torch.save and numpy report a failed write as RuntimeError / ValueError; the free space
    # says what happened.
    probe = run_dir if run_dir.exists() else run_dir.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return None
    if free < FULL_BELOW_BYTES:
        return (f"the filesystem of run.dir '{run_dir}' is full ({free} bytes free) "
                f"({type(exc).__name__}: {exc})")
    return None


def _final_barrier() -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - a peer already gone: nothing left to wait for
        pass


def run_command(cfg: Config, command: str, body: Callable[[], int]) -> int:
    """Run `body` (the command) with signals handled and its outcome recorded; returns the exit
    code. UserError is recorded and re-raised for the CLI to print."""
    from tidal_dist.cycle.plan import make_plan

    preemption.install(cfg.run.preempt_deadline_s)
    run_dir = Path(cfg.run.dir)
    rec = outcome.Recorder(run_dir, command)
    outcome.set_current(rec)
    clean = False
    lock: rundir_lock.RunDirLock | None = None
    try:
        if (run_dir / RUN_CONFIG_NAME).exists():
            bind_run_dir(cfg, write=False)  # another config's run dir: refused, nothing recorded
            if distributed.rank() == 0:
                # before anything is recorded: a second launch must not touch a live run's record
                lock = rundir_lock.acquire(run_dir, command)
                rec.bind()
            # other ranks record from outcome.running() on, once rank 0 has passed this point
        # `train` runs cycle 0 only: plan (and reserve disk for) that one cycle.
        plan_cfg = replace(cfg, al=replace(cfg.al, cycles=1)) if command == "train" else cfg
        try:
            plan = make_plan(plan_cfg, distributed.world_size())
        except UserError as e:
            if rec.bound and not holds_results(run_dir):
                raise UserError(f"{e}\n(the run dir '{run_dir}' was set up with this config by an "
                                f"earlier attempt and holds no results: fix the setting, then "
                                f"delete '{run_dir / RUN_CONFIG_NAME}' to start over)") from None
            raise
        if lock is None and distributed.rank() == 0:
            lock = rundir_lock.acquire(run_dir, command)  # a new run dir: checked, now created
        for warning in plan.warnings:  # what --dry-run would have noted
            _say(command, f"note: {warning}")
        code = body()
        status = "done" if code == 0 else "failed"
        code = rec.finish(status, "" if code == 0 else f"exit code {code}")
        clean = code == 0
    except UserError as e:
        preemption.disarm(rec.finish("bad_input", str(e)))
        raise
    except LabelsPending as e:
        code = rec.finish("waiting_for_labels", str(e))
        _say(command, f"waiting for labels: {e}")
        clean = True
    except preemption.Preempted as e:
        code = rec.finish("preempted", f"stopped at {e} ({preemption.reason()}); checkpoint saved, "
                                       f"run the same command again to continue")
        _say(command, f"preempted at {e}; checkpoint saved, run the same command again to continue")
        clean = True
    except BaseException as e:  # noqa: BLE001 - recorded, then handled or re-raised below
        problem = output_problem(e, run_dir) if isinstance(e, Exception) else None
        if problem is not None:
            preemption.disarm(rec.finish("bad_input", problem))
            raise UserError(f"{problem}; free space (or choose another run.dir) and run the same "
                            f"command again: committed results are intact") from None
        if preemption.requested():
            code = rec.finish("preempted", f"{preemption.reason()}, then {type(e).__name__}: {e}")
            print(f"tidal-dist {command}: stopped after '{preemption.reason()}' "
                  f"({type(e).__name__}: {e}); committed state is intact, run the same command "
                  f"again to continue", file=sys.stderr, flush=True)
            preemption.disarm(code)
            return code
        rec.finish("failed", f"{type(e).__name__}: {e}")
        preemption.disarm(outcome.EXIT_CODES["failed"])
        raise
    finally:
        outcome.set_current(None)
        if lock is not None and not clean:
            lock.release()
    if clean:
        _final_barrier()
    if lock is not None:
        lock.release()  # after the barrier: every rank is done with the run dir
    preemption.disarm(code)
    return code
