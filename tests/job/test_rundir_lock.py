"""One run per run dir (tidal_dist/job/rundir_lock.py), with real launches: while a run holds
its run dir, a second launch (a plain process, or torchrun as a SLURM requeue would start it) is
refused with exit 2 naming the holder, and the live run's record is left alone; after kill -9 of
the holder the lock is free at once, `status` says it stopped (not "still running"), and the same
command resumes. (Runs in different run dirs at once: tests/sweep/test_sweep.py, --jobs 2.)"""

import os
import signal

from tests.mp import run_module, tail, torchrun
from tests.procs import loader_worker_pids, start, wait_until
from tidal_dist.job import outcome, rundir_lock


def run_args(root, run_dir, *extra):
    return ["run", f"data.root={root}", "data.num_workers=1", "train.data_path=loader", "model.backbone=small_cnn",
            "model.width=4", "train.epochs=2", "train.batch_size=16", "train.checkpoint_every=1",
            "al.initial=20", "al.budget=10", "al.cycles=1", "al.subset_size=40",
            f"run.dir={run_dir}", *extra]


def test_a_second_launch_is_refused_and_kill_9_leaves_no_stale_lock(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = run_args(synthetic_dataset, run_dir)
    # the first launch hangs inside its first checkpoint: alive, holding the run dir
    first = start("plain", 1, ["-m", "tidal_dist", *args], tmp_path / "first.log",
                  env={"TIDAL_DIST_CRASH_AT": "stall_in_checkpoint:0"})
    wait_until(lambda: any(run_dir.glob("work/cycle_0000/**/rng.rank0.pt")),
               "the first checkpoint", first)
    assert loader_worker_pids(first.proc.pid)  # forked while the lock was held
    assert rundir_lock.probe(run_dir) is True
    live = outcome.read(run_dir)
    assert (live.status, live.pid) == ("running", first.proc.pid)

    second = run_module(args)
    assert second.returncode == 2, tail(second)
    assert f"run.dir '{run_dir}' is in use by another launch: `run` pid {first.proc.pid} on " \
           f"{os.uname().nodename}, since " in second.stderr
    assert "Traceback" not in second.stderr
    requeued = torchrun(2, ["-m", "tidal_dist", *args])  # torchrun turns rank 0's 2 into 1
    assert requeued.returncode != 0 and "is in use by another launch" in requeued.stderr
    assert outcome.read(run_dir) == live  # the live run's record untouched
    assert not list(run_dir.glob("outcome.rank*.json"))
    assert not (run_dir / "cycles").exists() or not list((run_dir / "cycles").iterdir())

    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=60)
    # its loader worker may outlive it a moment: it closed its copy of the lock file at fork
    assert rundir_lock.probe(run_dir) is False
    status = run_module(["status", str(run_dir)])
    assert status.returncode == 4 and "stopped without recording an outcome" in status.stdout

    again = run_module(args)
    assert again.returncode == 0, tail(again)
    assert outcome.read(run_dir).status == "done"
    assert not list((run_dir / "cycles").glob(".*.partial"))
