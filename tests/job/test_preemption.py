"""Stop signals on real launches: SIGTERM / SIGUSR1 / SIGINT to the ranks, their DataLoader workers,
whole process groups and the launcher itself, during training, evaluation and scoring, end in one
agreed checkpoint and the preempted outcome; the same command then finishes with the result of an
uninterrupted run. A second SIGTERM or a missed deadline exits at once, committed state intact."""

import hashlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import torch

from tests.mp import run_module, tail, torchrun
from tests.procs import (loader_worker_pids, rank_pids, signal_group, start, wait_for,
                         wait_for_training, wait_until)
from tidal_dist.job import outcome
from tidal_dist.job.preemption import EXIT_PREEMPTED

EPOCHS = 30


class _Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        time.sleep(0.05)
        return i


def test_loader_workers_forward_stop_signals_and_obey_their_rank(tmp_path):
    """A worker hands SIGUSR1 from another process to its rank, and exits on its rank's own
    SIGTERM (how the DataLoader terminates a worker that does not stop in time)."""
    from tidal_dist.job.preemption import loader_worker_init

    got = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        loader = torch.utils.data.DataLoader(_Slow(), num_workers=1, batch_size=2,
                                             worker_init_fn=loader_worker_init)
        batches = iter(loader)
        next(batches)
        worker = batches._workers[0]
        subprocess.run(["kill", "-USR1", str(worker.pid)], check=True)  # not the rank: forwarded
        wait_until(lambda: got == [signal.SIGUSR1], "the forwarded SIGUSR1", timeout=10)
        assert worker.is_alive()
        os.kill(worker.pid, signal.SIGTERM)  # from the rank itself
        worker.join(timeout=10)
        assert worker.exitcode == 0
        del batches
    finally:
        signal.signal(signal.SIGUSR1, previous)


def args_for(root, run_dir, **extra):
    # The loader path: these runs are about DataLoader workers (the device path has none).
    base = {"data.root": root, "data.num_workers": 2, "train.data_path": "loader",
            "model.backbone": "small_cnn",
            "model.width": 4, "train.epochs": EPOCHS, "train.batch_size": 16, "train.lr": 0.05,
            "train.checkpoint_every": 0, "al.initial": 40, "al.budget": 10, "al.cycles": 1,
            "al.subset_size": 60, "al.score_batch_size": 8, "train.eval_batch_size": 8,
            "run.dir": run_dir, "run.seed": 3, "run.deterministic": True}
    base.update(extra)
    return ["-m", "tidal_dist", "run", *[f"{k}={v}" for k, v in base.items()]]


def result_of(run_dir, cycles=1):
    out = []
    for k in range(cycles):
        d = run_dir / "cycles" / f"cycle_{k:04d}"
        out.append({"labeled": np.load(d / "labeled.npz")["ids"],
                    "queried": np.load(d / "queried.npz")["ids"],
                    "uncertainty": np.load(d / "queried.npz")["uncertainty"],
                    "count": np.load(d / "td" / "count.npy"), "sum": np.load(d / "td" / "sum.npy"),
                    "accuracy": json.loads((d / "metrics.json").read_text())["accuracy"]})
    return out


def assert_same_result(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g["labeled"], r["labeled"])
        np.testing.assert_array_equal(g["queried"], r["queried"])
        np.testing.assert_array_equal(g["count"], r["count"])
        np.testing.assert_allclose(g["sum"], r["sum"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g["uncertainty"], r["uncertainty"], rtol=1e-5)
        assert g["accuracy"] == pytest.approx(r["accuracy"])


def the_only_checkpoint(run_dir, cycle=0):
    ckpt = run_dir / "work" / f"cycle_{cycle:04d}" / "ckpt"
    folders = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    assert len(folders) == 1 and not folders[0].startswith("."), folders  # one, complete
    assert (ckpt / "latest").read_text().strip() == folders[0]
    return json.loads((ckpt / folders[0] / "meta.json").read_text())


def recorded(run_dir):
    record = outcome.read(run_dir)
    assert record is not None, f"no outcome in {run_dir}"
    return record


@pytest.fixture(scope="module")
def reference(synthetic_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("signals_ref") / "run"
    proc = torchrun(2, args_for(synthetic_dataset, run_dir))
    assert proc.returncode == 0, tail(proc)
    return result_of(run_dir)


def test_sigterm_to_every_process_group_under_torchrun(reference, synthetic_dataset, tmp_path):
    """What SLURM's scancel / preemption does: every process of the job gets SIGTERM, the loader
    workers (2 per rank) and the torchrun agent included; the agent forwards it once more."""
    run_dir = tmp_path / "run"
    job = start("torchrun", 2, args_for(synthetic_dataset, run_dir), tmp_path / "log")
    wait_for_training(run_dir, job)
    ranks = rank_pids(job, 2)
    wait_until(lambda: all(len(loader_worker_pids(p)) == 2 for p in ranks.values()),
               "two loader workers per rank", job)
    time.sleep(1.0)
    for pid in ranks.values():
        signal_group(pid, signal.SIGTERM)  # a rank's group: the rank and its loader workers
    signal_group(job.proc.pid, signal.SIGTERM)  # the agent, which forwards it again
    rc = job.wait()
    log = job.output()
    assert rc == 1, job.tail()  # torchrun reports any non-zero rank exit as its own 1
    assert "DataLoader worker" not in log, job.tail()  # no worker died from the group signal
    assert "preempted at cycle 0" in log
    record = recorded(run_dir)
    assert (record.status, record.exit_code, record.world_size) == ("preempted", 75, 2)
    assert "got SIGTERM" in record.message
    status = run_module(["status", str(run_dir)])
    assert status.returncode == EXIT_PREEMPTED and "preempted" in status.stdout
    meta = the_only_checkpoint(run_dir)
    assert meta["world_size"] == 2 and (meta["epoch"], meta["step"]) != (0, 0)

    resumed = torchrun(2, args_for(synthetic_dataset, run_dir))
    assert resumed.returncode == 0, tail(resumed)
    assert recorded(run_dir).status == "done"
    assert_same_result(result_of(run_dir), reference)


def test_launcher_killed_by_sigusr1_under_accelerate_launch(reference, synthetic_dataset, tmp_path):
    """SIGUSR1 to the launcher's group kills `accelerate launch` at once (its torchrun agent does
    not handle USR1) and leaves the ranks, which run in sessions of their own, orphaned and
    unsignalled. They notice the launcher is gone, agree, checkpoint once and record the
    preempted outcome instead of training on with nobody to report to."""
    run_dir = tmp_path / "run"
    args = args_for(synthetic_dataset, run_dir, **{"data.num_workers": 1, "train.epochs": 40})
    job = start("accelerate", 2, args, tmp_path / "log")
    wait_for_training(run_dir, job)
    ranks = rank_pids(job, 2)
    time.sleep(1.0)
    signal_group(job.proc.pid, signal.SIGUSR1)
    assert job.wait() == -signal.SIGUSR1  # the launcher died at once
    procs = [psutil.Process(p) for p in ranks.values()]
    psutil.wait_procs(procs, timeout=180)
    record = recorded(run_dir)
    assert record.status == "preempted", job.tail()
    assert "the launcher (pid" in record.message and "exited" in record.message
    meta = the_only_checkpoint(run_dir)
    assert meta["epoch"] < 40 and "DataLoader worker" not in job.output()
    resumed = start("accelerate", 2, args, tmp_path / "log2")
    assert resumed.wait() == 0, resumed.tail()
    assert recorded(run_dir).status == "done"
    counts = np.load(run_dir / "cycles" / "cycle_0000" / "td" / "count.npy")
    assert (counts == 40).all()  # no visit lost or doubled across the stop


def test_sigterm_to_a_one_process_accelerate_launch(synthetic_dataset, tmp_path):
    """`accelerate launch` with one process dies of SIGTERM without passing it on; its orphaned
    child stops by itself with a checkpoint."""
    run_dir = tmp_path / "run"
    job = start("accelerate-1", 1, args_for(synthetic_dataset, run_dir, **{"train.epochs": 60}),
                tmp_path / "log")
    wait_for_training(run_dir, job)
    child = psutil.Process(rank_pids(job, 1)[0])
    job.proc.send_signal(signal.SIGTERM)  # the launcher alone
    assert job.wait() == -signal.SIGTERM
    psutil.wait_procs([child], timeout=180)
    record = recorded(run_dir)
    assert record.status == "preempted" and "the launcher (pid" in record.message, job.tail()
    the_only_checkpoint(run_dir)


def test_a_signal_to_one_loader_worker_stops_a_plain_run(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    job = start("plain", 1, args_for(synthetic_dataset, run_dir, **{"train.epochs": 60}),
                tmp_path / "log")
    wait_for_training(run_dir, job)
    wait_until(lambda: len(loader_worker_pids(job.proc.pid)) == 2, "two loader workers", job)
    time.sleep(0.5)
    worker = loader_worker_pids(job.proc.pid)[1]
    psutil.Process(worker).send_signal(signal.SIGUSR1)
    assert job.wait() == EXIT_PREEMPTED, job.tail()
    assert recorded(run_dir).message.count("got SIGUSR1") == 1
    the_only_checkpoint(run_dir)


@pytest.mark.parametrize("phase, launcher", [("evaluation", "torchrun"), ("scoring", "plain")])
def test_a_signal_during_evaluation_or_scoring(synthetic_dataset, tmp_path, phase, launcher):
    """Evaluation and scoring have no collectives in their loops: the rank that got the signal
    stops at its next batch, and all ranks agree after the loop. Under torchrun only rank 1's
    group is signalled, so rank 0 learns of it through the agreement."""
    run_dir = tmp_path / "run"
    nproc = 2 if launcher == "torchrun" else 1
    extra = {"train.epochs": 2, "data.num_workers": 1}
    job = start(launcher, nproc, args_for(synthetic_dataset, run_dir, **extra), tmp_path / "log",
                env={"TIDAL_DIST_CRASH_AT": "slow_inference"})
    work = run_dir / "work" / "cycle_0000"
    marker = work / "trained" / "train.json" if phase == "evaluation" else \
        work / "scores" / "score_ids.rank0.npy"
    wait_for(marker, job)
    time.sleep(1.0)
    ranks = rank_pids(job, nproc)
    signal_group(ranks[nproc - 1], signal.SIGTERM if phase == "evaluation" else signal.SIGINT)
    job.wait()
    record = recorded(run_dir)
    assert record.status == "preempted", job.tail()
    assert f"stopped at {phase}" in record.message
    assert not (run_dir / "cycles" / "cycle_0000").exists()
    again = (torchrun(2, args_for(synthetic_dataset, run_dir, **extra)) if launcher == "torchrun"
             else run_module(args_for(synthetic_dataset, run_dir, **extra)[2:]))
    assert again.returncode == 0, tail(again)
    assert f"resuming at {phase}" in again.stderr
    assert recorded(run_dir).status == "done"


# --------------------------------------------------------------------------------------------
# Forced exits: a stalled checkpoint (a hung filesystem) in cycle 1, after cycle 0 committed.

def stall_args(root, run_dir, **extra):
    return args_for(root, run_dir, **{"al.cycles": 2, "train.epochs": 2, "data.num_workers": 1,
                                      "train.checkpoint_every": 1, **extra})


def tree_digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def plain_reference(synthetic_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stall_ref") / "run"
    proc = run_module(stall_args(synthetic_dataset, run_dir)[2:])
    assert proc.returncode == 0, tail(proc)
    return result_of(run_dir, cycles=2)


@pytest.mark.parametrize("how", ["second_sigterm", "deadline"])
def test_forced_exit_keeps_committed_state(plain_reference, synthetic_dataset, tmp_path, how):
    run_dir = tmp_path / "run"
    extra = {"run.preempt_deadline_s": 4 if how == "deadline" else 600}
    job = start("plain", 1, stall_args(synthetic_dataset, run_dir, **extra), tmp_path / "log",
                env={"TIDAL_DIST_CRASH_AT": "stall_in_checkpoint:1"})
    ckpt = run_dir / "work" / "cycle_0001" / "ckpt"
    wait_for(ckpt / ".e0001_s000000.partial" / "rng.rank0.pt", job)
    committed = tree_digest(run_dir / "cycles" / "cycle_0000")
    signal_group(job.proc.pid, signal.SIGTERM)
    t0 = time.time()
    if how == "second_sigterm":
        time.sleep(4.0)  # past the window in which a repeat counts as the same signal
        assert job.proc.poll() is None, "the stalled run exited before the second signal"
        t0 = time.time()
        signal_group(job.proc.pid, signal.SIGTERM)
    rc = job.wait(timeout=60)
    waited = time.time() - t0
    assert rc == EXIT_PREEMPTED, job.tail()
    assert waited < (3 if how == "second_sigterm" else 12), waited
    record = recorded(run_dir)
    assert record.status == "preempted"
    assert ("second stop signal" if how == "second_sigterm" else "did not finish within 4 s") \
        in record.message
    assert tree_digest(run_dir / "cycles" / "cycle_0000") == committed
    assert not (ckpt / "latest").exists()  # the stalled checkpoint never became visible
    resumed = run_module(stall_args(synthetic_dataset, run_dir)[2:])
    assert resumed.returncode == 0, tail(resumed)
    assert_same_result(result_of(run_dir, cycles=2), plain_reference)
