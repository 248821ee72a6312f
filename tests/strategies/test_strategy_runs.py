"""`tidal-dist run al.strategy=NAME` end to end for every strategy, the objective in force per
cycle, the ablation scores, and the settings refused before any training."""

import json

import numpy as np
import pytest

from tests.mp import run_module, tail, torchrun
from tidal_dist.strategies import registry

AUTO_OBJECTIVE = {"tidal_entropy": "tidal", "tidal_margin": "tidal", "tidal_cluster": "tidal",
                  "lloss": "lloss"}


def args(root, run_dir, **extra):
    base = {"data.root": root, "data.num_workers": 0, "model.backbone": "small_cnn",
            "model.width": 4, "train.epochs": 1, "train.batch_size": 16,
            "train.checkpoint_every": 0, "al.initial": 20, "al.budget": 8, "al.cycles": 1,
            "al.subset_size": 40, "al.score_batch_size": 32, "al.cluster_factor": 2,
            "run.dir": run_dir, "run.seed": 2}
    base.update(extra)
    return ["run", *[f"{k}={v}" for k, v in base.items()]]


def cycle_metrics(run_dir, k=0):
    return json.loads((run_dir / "cycles" / f"cycle_{k:04d}" / "metrics.json").read_text())


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_strategy_runs_and_records_its_objective(synthetic_dataset, tmp_path, name):
    run_dir = tmp_path / "run"
    proc = run_module(args(synthetic_dataset, run_dir, **{"al.strategy": name}))
    assert proc.returncode == 0, tail(proc)
    m = cycle_metrics(run_dir)
    assert m["strategy"] == name and m["objective"] == AUTO_OBJECTIVE.get(name, "ce")
    assert m["queried"] == 8
    with np.load(run_dir / "cycles" / "cycle_0000" / "queried.npz") as q:
        assert len(np.unique(q["ids"])) == 8 and np.isfinite(q["reported"]).all()
    assert set(m["train"][0]) >= {"loss", "ce", "kl"}  # TD recorded under every objective
    assert {"kl_td_module", "kl_td_classifier"} <= set(m["module_analysis"])
    scores = m["score_ablation"]
    assert {"entropy", "margin", "least_confidence", "tidal_entropy", "tidal_margin"} <= set(scores)
    assert ("lloss" in scores) == (name == "lloss")  # only a loss head can be scored


def test_one_tidal_run_yields_the_classifier_vs_module_ablation(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module(args(synthetic_dataset, run_dir, **{"al.strategy": "entropy",
                                                          "train.objective": "tidal",
                                                          "al.val_size": 25}))
    assert proc.returncode == 0, tail(proc)
    m = cycle_metrics(run_dir)
    assert m["objective"] == "tidal"
    assert m["val_samples"] == 25 and 0 <= m["val_accuracy"] <= 1  # the validation hold-out
    ablation = m["score_ablation"]
    # entropy's own picks are the queries: full overlap with itself
    assert ablation["entropy"]["overlap_with_queried"] == 1.0
    assert 0 <= ablation["all_candidates"]["error_rate"] <= 1
    for name, entry in ablation.items():
        if name != "all_candidates":
            assert 0 <= entry["error_rate"] <= 1 and sum(entry["histogram"]) == 8
    with np.load(run_dir / "cycles" / "cycle_0000" / "scores.npz") as s:
        assert {"score_entropy", "score_tidal_entropy", "predicted"} <= set(s.files)
        np.testing.assert_allclose(s["score_entropy"], s["uncertainty"])


def test_without_td_recording_baselines_train_on_cross_entropy_alone(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module(args(synthetic_dataset, run_dir, **{"al.strategy": "margin",
                                                          "train.record_td": False}))
    assert proc.returncode == 0, tail(proc)
    m = cycle_metrics(run_dir)
    assert set(m["train"][0]) == {"loss", "ce", "samples", "seconds"}
    assert "module_analysis" not in m
    assert "tidal_entropy" not in m["score_ablation"]


@pytest.mark.parametrize("strategy", ["lloss", "coreset", "dynamical", "tod"])
def test_two_processes(synthetic_dataset, tmp_path, strategy):
    run_dir = tmp_path / "run"
    proc = torchrun(2, ["-m", "tidal_dist", *args(synthetic_dataset, run_dir, **{
        "al.strategy": strategy, "al.cycles": 2, "data.num_workers": 1})])
    assert proc.returncode == 0, tail(proc)
    for k in range(2):
        m = cycle_metrics(run_dir, k)
        assert m["world_size"] == 2 and m["labeled"] == 20 + 8 * k and m["queried"] == 8
        with np.load(run_dir / "cycles" / f"cycle_{k:04d}" / "scores.npz") as s:
            u = s["uncertainty"]
            assert len(u) == 40 and np.isfinite(u).all()  # every candidate scored once
            if strategy == "tod":  # ‖p - q‖₂ of two probability rows, and not all equal
                assert (u >= 0).all() and (u <= np.sqrt(2)).all() and u.std() > 0


@pytest.mark.parametrize("extra, message", [
    ({"train.objective": "focal"}, "train.objective' expects 'auto' | 'ce' | 'tidal' | 'lloss'"),
    ({"al.strategy": "lloss", "train.batch_size": 15}, "per-rank batch must be even"),
    ({"al.strategy": "coreset", "al.budget": 50}, "al.subset_size draws only 40"),
    ({"al.strategy": "badge", "al.subset_size": "all", "al.initial": 190, "al.budget": 20},
     "cycle 0 has only 13"),
    ({"al.strategy": "tidal_margin", "train.objective": "ce", "train.record_td": False},
     "train.record_td=true"),
    ({"al.strategy": "lloss", "train.objective": "tidal"}, "loss prediction head"),
])
def test_refused_before_any_training(synthetic_dataset, tmp_path, extra, message):
    run_dir = tmp_path / "run"
    proc = run_module(args(synthetic_dataset, run_dir, **extra))
    assert proc.returncode == 2, tail(proc)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "work").exists() and not (run_dir / "cycles").exists()
