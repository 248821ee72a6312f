"""Resume bookkeeping on real runs: a cycle's metrics keep every epoch across a mid-cycle resume,
with the interrupted epoch's loss over all ranks; another world size from an epoch-boundary
checkpoint is said and recorded; a restart after training says where it resumes; a pool that
runs out ends the run (done) instead of committing empty cycles."""

import json

import numpy as np
import pytest

from tests.mp import run_module, tail, torchrun
from tidal_dist.job import outcome

EPOCHS = 4


def args(root, run_dir, **extra):
    base = {"data.root": root, "data.num_workers": 1, "model.backbone": "small_cnn",
            "model.width": 4, "train.epochs": EPOCHS, "train.batch_size": 16, "train.lr": 0.05,
            "train.checkpoint_every": 1, "al.initial": 40, "al.budget": 10, "al.cycles": 1,
            "al.subset_size": 60, "al.score_batch_size": 32, "run.dir": run_dir, "run.seed": 2,
            "run.deterministic": True}
    base.update(extra)
    return ["-m", "tidal_dist", "run", *[f"{k}={v}" for k, v in base.items()]]


def metrics(run_dir, k=0):
    return json.loads((run_dir / "cycles" / f"cycle_{k:04d}" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(synthetic_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume_ref") / "run"
    proc = torchrun(2, args(synthetic_dataset, run_dir))
    assert proc.returncode == 0, tail(proc)
    return metrics(run_dir)


def test_a_mid_epoch_resume_keeps_every_epoch_and_the_loss_of_all_ranks(reference,
                                                                         synthetic_dataset,
                                                                         tmp_path):
    run_dir = tmp_path / "run"
    stopped = torchrun(2, args(synthetic_dataset, run_dir),
                       env={"TIDAL_DIST_CRASH_AT": "sigterm_epoch:2:1@rank0"})
    assert outcome.read(run_dir).status == "preempted", tail(stopped)
    ckpt = run_dir / "work" / "cycle_0000" / "ckpt"
    meta = json.loads((ckpt / (ckpt / "latest").read_text().strip() / "meta.json").read_text())
    # Stopped inside epoch 2 (3 steps of 8 per rank): at step 2, or 3 if the request is noticed
    # one boundary later; its 2 finished epochs travel in the checkpoint.
    assert meta["epoch"] == 2 and meta["step"] in (2, 3) and len(meta["epochs"]) == 2
    resumed = torchrun(2, args(synthetic_dataset, run_dir))
    assert resumed.returncode == 0, tail(resumed)
    got, ref = metrics(run_dir)["train"], reference["train"]
    assert len(got) == EPOCHS
    for epoch, (g, r) in enumerate(zip(got, ref)):
        assert g["samples"] == r["samples"] == 40, epoch
        for key in ("loss", "ce", "kl"):
            assert g[key] == pytest.approx(r[key], rel=1e-5), (epoch, key)
    assert metrics(run_dir)["resumed_from"] == {"epoch": 2, "step": meta["step"], "world_size": 2}
    assert "world_size_changed" not in metrics(run_dir)


def test_another_world_size_from_an_epoch_boundary_is_said_and_recorded(synthetic_dataset,
                                                                        tmp_path):
    run_dir = tmp_path / "run"
    crashed = torchrun(2, args(synthetic_dataset, run_dir),
                       env={"TIDAL_DIST_CRASH_AT": "epoch:2:0@rank1"})  # kill -9 after epoch 2
    assert crashed.returncode != 0
    resumed = run_module(args(synthetic_dataset, run_dir)[2:])
    assert resumed.returncode == 0, tail(resumed)
    assert "the checkpoint was written by 2 process(es), this run has 1" in resumed.stderr
    m = metrics(run_dir)
    assert m["world_size_changed"] == {"checkpoint": 2, "now": 1, "at_epoch": 2}
    assert m["world_size"] == 1 and len(m["train"]) == EPOCHS


def test_a_restart_after_training_says_it_resumes_at_scoring(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    extra = {"data.num_workers": 0, "train.epochs": 1}
    crashed = run_module(args(synthetic_dataset, run_dir, **extra)[2:],
                         env={"TIDAL_DIST_CRASH_AT": "after_score:0"})
    assert crashed.returncode != 0 and (run_dir / "work" / "cycle_0000" / "trained").is_dir()
    resumed = run_module(args(synthetic_dataset, run_dir, **extra)[2:])
    assert resumed.returncode == 0, tail(resumed)
    assert "cycle 0: training and evaluation finished before the restart" in resumed.stderr
    assert "resuming at scoring" in resumed.stderr
    assert len(metrics(run_dir)["train"]) == 1


def test_a_pool_that_runs_out_ends_the_run(synthetic_dataset, tmp_path):
    """203 pool samples, 180 + 20 per cycle: cycle 1 queries the last 3, cycle 2 trains on the
    whole pool and has nothing to query, and the run ends there (done) instead of committing
    cycles 3 and 4 with nothing new."""
    run_dir = tmp_path / "run"
    a = args(synthetic_dataset, run_dir, **{"data.num_workers": 0, "train.epochs": 1,
                                            "train.batch_size": 64, "al.initial": 180,
                                            "al.budget": 20, "al.cycles": 5})[2:]
    plan = run_module([*a, "--dry-run"])
    assert plan.returncode == 0 and "runs out in cycle 2" in plan.stdout
    proc = run_module(a)
    assert proc.returncode == 0, tail(proc)
    assert "the pool ran out" in proc.stdout
    assert sorted(p.name for p in (run_dir / "cycles").iterdir()) == \
        ["cycle_0000", "cycle_0001", "cycle_0002"]
    assert [metrics(run_dir, k)["queried"] for k in range(3)] == [20, 3, 0]
    assert metrics(run_dir, 2)["labeled"] == 203 and metrics(run_dir, 2)["candidates"] == 0
    with np.load(run_dir / "cycles" / "cycle_0002" / "labeled.npz") as lab:
        assert len(np.unique(lab["ids"])) == 203
    record = outcome.read(run_dir)
    assert record.status == "done" and "the pool ran out" in record.message
    again = run_module(a)  # a rerun does no more work
    assert again.returncode == 0 and not (run_dir / "cycles" / "cycle_0003").exists()
