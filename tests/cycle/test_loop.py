"""The active-learning loop end to end: real 2-process runs, commits, kill -9 and resume, SIGTERM."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.mp import REPO, cpu_env, run_module, tail, torchrun
from tidal_dist.data.manifest import load_labels, load_manifest

CYCLES, INITIAL, BUDGET = 3, 20, 10


def loop_args(root, run_dir, **extra):
    base = {"data.root": root, "data.num_workers": 1, "model.backbone": "small_cnn",
            "model.width": 4, "train.epochs": 2, "train.batch_size": 16, "train.lr": 0.05,
            "train.checkpoint_every": 1, "al.initial": INITIAL, "al.budget": BUDGET,
            "al.cycles": CYCLES, "al.subset_size": 60, "al.score_batch_size": 32,
            "run.dir": run_dir, "run.seed": 1, "run.deterministic": True}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run2(root, run_dir, env=None, **extra):
    return torchrun(2, ["-m", "tidal_dist", "run", *loop_args(root, run_dir, **extra)], env=env)


def cycles_of(run_dir):
    out = []
    for k in range(CYCLES):
        d = run_dir / "cycles" / f"cycle_{k:04d}"
        with np.load(d / "labeled.npz") as lab, np.load(d / "queried.npz") as q:
            out.append({"labeled": lab["ids"], "labels": lab["labels"], "queried": q["ids"],
                        "uncertainty": q["uncertainty"]})
    return out


@pytest.fixture(scope="module")
def reference_run(synthetic_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    proc = run2(synthetic_dataset, run_dir)
    assert proc.returncode == 0, tail(proc)
    return run_dir, proc


def test_three_cycles_two_processes_keep_the_invariants(reference_run, synthetic_dataset):
    run_dir, proc = reference_run
    assert "3 cycles done" in proc.stdout
    pool = load_manifest(synthetic_dataset).split("pool").ids()
    truth = load_labels(synthetic_dataset, "pool")
    cycles = cycles_of(run_dir)
    for k, c in enumerate(cycles):
        labeled, queried = c["labeled"], c["queried"]
        assert len(labeled) == INITIAL + k * BUDGET and len(np.unique(labeled)) == len(labeled)
        assert len(queried) == BUDGET and len(np.unique(queried)) == BUDGET  # budget exact
        assert np.isin(labeled, pool).all() and np.isin(queried, pool).all()
        assert not np.isin(queried, labeled).any()  # queries come from the unlabeled pool
        unlabeled = np.setdiff1d(pool, labeled)
        assert len(unlabeled) + len(labeled) == len(pool)  # disjoint and covering
        np.testing.assert_array_equal(c["labels"], truth[labeled])  # simulated oracle
        if k:
            prev = cycles[k - 1]
            np.testing.assert_array_equal(labeled, np.union1d(prev["labeled"], prev["queried"]))
        metrics = json.loads((run_dir / "cycles" / f"cycle_{k:04d}" / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["labeled"] == len(labeled)
        assert sum(metrics["labeled_histogram"]) == len(labeled)
        assert set(metrics["seconds"]) >= {"train", "evaluate", "score", "select", "commit"}
        td = run_dir / "cycles" / f"cycle_{k:04d}" / "td"
        np.testing.assert_array_equal(np.load(td / "ids.npy"), labeled)
        assert (np.load(td / "count.npy") == 2).all()  # every labeled id, once per epoch
    assert not list((run_dir / "work").glob("cycle_*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["labeled"] for r in results["cycles"]] == [20, 30, 40]
    assert (run_dir / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_rerunning_a_finished_run_does_no_work(reference_run, synthetic_dataset):
    run_dir, _ = reference_run
    stamp = (run_dir / "cycles" / "cycle_0002" / "metrics.json").stat().st_mtime_ns
    proc = run_module(["run", *loop_args(synthetic_dataset, run_dir)])
    assert proc.returncode == 0, tail(proc)
    assert "resuming" in proc.stderr and "3 cycles done" in proc.stdout
    assert (run_dir / "cycles" / "cycle_0002" / "metrics.json").stat().st_mtime_ns == stamp


def test_a_different_config_is_refused(reference_run, synthetic_dataset):
    run_dir, _ = reference_run
    proc = run_module(["run", *loop_args(synthetic_dataset, run_dir, **{"al.budget": 11})])
    assert proc.returncode == 2
    assert "al.budget: 10 (run dir) != 11 (now)" in proc.stderr


@pytest.mark.parametrize("crash_at, committed_after_crash", [
    ("epoch:1:1@rank1", 0),          # (a) mid-epoch, on rank 1, in cycle 0
    ("after_score:1@rank0", 1),       # (b) after scoring cycle 1, before its commit
    ("during_commit:1@rank0", 1),     # (c) half-way through writing cycle 1's commit
])
def test_kill9_then_resume_gives_the_uninterrupted_result(reference_run, synthetic_dataset,
                                                          tmp_path, crash_at, committed_after_crash):
    run_dir = tmp_path / "run"
    crashed = run2(synthetic_dataset, run_dir, env={"TIDAL_DIST_CRASH_AT": crash_at})
    assert crashed.returncode != 0, tail(crashed)
    committed = sorted(p.name for p in (run_dir / "cycles").glob("cycle_*")) \
        if (run_dir / "cycles").exists() else []
    assert len(committed) == committed_after_crash
    if crash_at.startswith("during_commit"):
        assert (run_dir / "cycles" / ".cycle_0001.partial").exists()
    if crash_at.startswith("epoch"):
        assert (run_dir / "work" / "cycle_0000" / "ckpt" / "latest").exists()
    resumed = run2(synthetic_dataset, run_dir)
    assert resumed.returncode == 0, tail(resumed)
    ref = cycles_of(reference_run[0])
    got = cycles_of(run_dir)
    for k in range(CYCLES):
        np.testing.assert_array_equal(got[k]["labeled"], ref[k]["labeled"])
        np.testing.assert_array_equal(got[k]["queried"], ref[k]["queried"])
        np.testing.assert_allclose(got[k]["uncertainty"], ref[k]["uncertainty"], rtol=1e-5)
    assert not (run_dir / "cycles" / ".cycle_0001.partial").exists()


def test_sigterm_on_one_rank_stops_all_ranks_with_a_checkpoint(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    # record_epoch_probs: its per-epoch file tells the test that training is under way, and the
    # interrupted epoch's record must come out whole after the resume.
    args = loop_args(synthetic_dataset, run_dir, **{"train.epochs": 40, "al.cycles": 1,
                                                    "train.checkpoint_every": 0,
                                                    "train.record_epoch_probs": True})
    # Rank 1 alone gets SIGTERM (sent to itself at a known step: the run is too fast to aim at
    # from outside; tests/job/test_preemption.py signals from outside, on the slower loader path).
    stopped = torchrun(2, ["-m", "tidal_dist", "run", *args],
                       env={"TIDAL_DIST_CRASH_AT": "sigterm_epoch:5:1@rank1"})
    out, err = stopped.stdout, stopped.stderr
    assert "preempted at cycle 0" in out, f"{out[-2000:]}\n{err[-3000:]}"
    ckpt = run_dir / "work" / "cycle_0000" / "ckpt"
    latest = (ckpt / "latest").read_text().strip()
    meta = json.loads((ckpt / latest / "meta.json").read_text())
    assert (meta["epoch"], meta["step"], meta["world_size"]) == (5, 2, 2)  # after the signal's step
    other_world = run_module(["run", *args])  # a mid-epoch split can't be continued by 1 rank
    assert other_world.returncode == 2 and "resume it with 2" in other_world.stderr
    resumed = torchrun(2, ["-m", "tidal_dist", "run", *args])
    assert resumed.returncode == 0, tail(resumed)
    assert f"resuming at epoch {meta['epoch'] + 1}, step {meta['step']}" in resumed.stderr
    td = run_dir / "cycles" / "cycle_0000" / "td"
    assert (np.load(td / "count.npy") == 40).all()  # no visit lost or doubled across the stop
    epochs = sorted((td / "epochs").glob("probs_e*.npy"))
    assert len(epochs) == 40
    total = sum(np.load(e).astype(np.float64) for e in epochs)
    np.testing.assert_allclose(total, np.load(td / "sum.npy"), rtol=1e-4, atol=1e-5)
    stopped = np.load(td / "epochs" / f"probs_e{meta['epoch']:04d}.npy")
    np.testing.assert_allclose(stopped.sum(1), 1.0, rtol=1e-5)  # every id of the stopped epoch


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_plain_process_exits_with_the_requeue_code(synthetic_dataset, tmp_path, signum):
    run_dir = tmp_path / "run"
    args = loop_args(synthetic_dataset, run_dir, **{"train.epochs": 40, "al.cycles": 1,
                                                    "data.num_workers": 0,
                                                    "train.record_epoch_probs": True})
    name = "sigterm_epoch" if signum == signal.SIGTERM else "sigusr1_epoch"
    proc = run_module(["run", *args], env={"TIDAL_DIST_CRASH_AT": f"{name}:3:0"})
    from tidal_dist.job.preemption import EXIT_PREEMPTED

    assert proc.returncode == EXIT_PREEMPTED, tail(proc)


def test_accelerate_launch_with_the_shipped_cpu_config(synthetic_dataset, tmp_path):
    """The demo's launcher: `accelerate launch --config_file launch/accelerate/cpu_2proc.yaml`."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "launch/accelerate/cpu_2proc.yaml", "--main_process_port", "0", "-m", "tidal_dist",
           "run", *loop_args(synthetic_dataset, run_dir, **{"al.cycles": 1, "train.epochs": 1})]
    proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, tail(proc)
    metrics = json.loads((run_dir / "cycles" / "cycle_0000" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert "1 cycles done" in proc.stdout


def test_unknown_strategy_fails_before_any_training(synthetic_dataset, tmp_path):
    proc = run_module(["run", *loop_args(synthetic_dataset, tmp_path / "run",
                                         **{"al.strategy": "tidal_entropyy"})])
    assert proc.returncode == 2
    assert "unknown strategy 'tidal_entropyy'" in proc.stderr and "tidal_entropy" in proc.stderr
    assert not (tmp_path / "run" / "work").exists()


def test_only_rank_0_writes_shared_files(synthetic_dataset, tmp_path):
    """Every open-for-write under the run dir, on every rank, is audited (sys.addaudithook)."""
    run_dir, audit_dir = tmp_path / "run", tmp_path / "audit"
    audit_dir.mkdir()
    args = [a for a in loop_args(synthetic_dataset, run_dir, **{"al.cycles": 2})
            if not a.startswith("run.dir=")]
    proc = torchrun(2, ["tests/workers/audited_run.py", str(run_dir), str(audit_dir), *args])
    assert proc.returncode == 0, tail(proc)
    rank0 = json.loads((audit_dir / "audit.rank0.json").read_text())
    rank1 = json.loads((audit_dir / "audit.rank1.json").read_text())
    assert rank0["rc"] == rank1["rc"] == 0
    assert any(p.endswith("metrics.json") or ".metrics.json." in p for p in rank0["foreign_writes"])
    assert rank1["foreign_writes"] == [], "rank 1 wrote shared files"
    # The TD gather is collective, in memory: while training, rank 1 opens no file in the run
    # dir (its RNG state in each checkpoint goes through torch.save's C++ writer, which the
    # audit does not see; its name carries the rank); its only files are its scoring parts
    # (candidates, and the labeled set where a strategy keeps its embeddings), and the note of
    # its host and pid at start (process.rank1.json: names a rank that is killed).
    # Rank 0 writes TD files only at checkpoints and the cycle's end, never per-epoch visits.
    assert rank1["all_writes"], "the audit saw no write at all"
    training = [p for p in rank1["all_writes"]
                if "/scores/" not in p and not os.path.basename(p).startswith((
                    "process.rank1.json", ".process.rank1.json."))]
    assert training == [], training
    assert not [p for p in rank0["all_writes"] if "visit" in os.path.basename(p)]


def test_missing_dataset_is_a_clear_error(tmp_path):
    proc = run_module(["run", f"data.root={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert f"'{tmp_path / 'nowhere'}' is not a dataset written by `tidal-dist prepare`" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_deepspeed_kill9_mid_epoch_resumes_from_its_zero_checkpoint(synthetic_dataset, tmp_path):
    """ZeRO-2 partitions are checkpointed per rank (weights_only) and restored exactly."""
    ds = {"train.engine": "deepspeed", "train.zero_stage": 2, "train.epochs": 3, "al.cycles": 1}
    reference = run2(synthetic_dataset, tmp_path / "ref", **ds)
    assert (tmp_path / "ref" / "cycles" / "cycle_0000").exists(), tail(reference)
    run_dir = tmp_path / "run"
    crashed = run2(synthetic_dataset, run_dir, env={"TIDAL_DIST_CRASH_AT": "epoch:2:1@rank1"}, **ds)
    assert crashed.returncode != 0
    ckpt = run_dir / "work" / "cycle_0000" / "ckpt"
    latest = (ckpt / "latest").read_text().strip()
    assert sorted(p.name for p in (ckpt / latest).glob("optim.rank*.pt")) == \
        ["optim.rank0.pt", "optim.rank1.pt"]
    resumed = run2(synthetic_dataset, run_dir, **ds)
    assert (run_dir / "cycles" / "cycle_0000").exists(), tail(resumed)
    assert "resuming at epoch 3, step 0" in resumed.stderr
    for name in ("queried.npz", "labeled.npz"):
        with np.load(tmp_path / "ref" / "cycles" / "cycle_0000" / name) as a, \
                np.load(run_dir / "cycles" / "cycle_0000" / name) as b:
            np.testing.assert_array_equal(a["ids"], b["ids"])
    with np.load(tmp_path / "ref" / "cycles" / "cycle_0000" / "queried.npz") as a, \
            np.load(run_dir / "cycles" / "cycle_0000" / "queried.npz") as b:
        np.testing.assert_allclose(a["uncertainty"], b["uncertainty"], rtol=1e-5)
