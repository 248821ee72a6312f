"""The candidates' measured training dynamics (training/measure.py) on real runs, 1 and 2
processes, each killed with SIGKILL mid-epoch twice and resumed: the committed running sums,
argmax votes and counts equal a direct computation from the weights after each epoch (read back
from the checkpoints the kills left), and the cycle records the measurements' cost."""

import json
import shutil

import numpy as np
import pytest
import torch

from tests.mp import run_module, tail, torchrun
from tidal_dist.config import load_config
from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.readers import RandomAccessReader
from tidal_dist.data.transforms import build_transform
from tidal_dist.models import build_model
from tidal_dist.models.network import Heads

EPOCHS = 3


def args(root, run_dir, strategy):
    base = {"data.root": root, "data.num_workers": 1, "model.backbone": "small_cnn",
            "model.width": 4, "train.epochs": EPOCHS, "train.batch_size": 16, "train.lr": 0.05,
            "train.checkpoint_every": 1, "al.initial": 20, "al.budget": 6, "al.cycles": 1,
            "al.subset_size": 30, "al.score_batch_size": 8, "al.strategy": strategy,
            "al.td_measure_every": 1, "run.dir": run_dir, "run.seed": 3,
            "run.deterministic": True}
    return ["run", *[f"{k}={v}" for k, v in base.items()]]


def launch(world, argv, env=None):
    if world == 1:
        return run_module(argv, env=env)
    return torchrun(2, ["-m", "tidal_dist", *argv], env=env)


def softmax_of(run_dir, state_dict, ids):
    """The candidates' softmax under `state_dict`, eval mode, no augmentation: what a
    measurement computes, done here directly."""
    cfg = load_config(run_dir / "config.yaml")
    manifest = load_manifest(cfg.data.root)
    model = build_model(cfg.model, manifest.num_classes, 1 if manifest.mode == "L" else 3,
                        Heads(td=any(k.startswith("td_module.") for k in state_dict)))
    model.load_state_dict(state_dict)
    model.eval()
    reader = RandomAccessReader(cfg.data.root, "pool", build_transform(
        cfg.data.eval_transform, manifest, train=False, image_size=cfg.data.image_size))
    x = torch.stack([reader[int(i)][1] for i in ids])
    with torch.no_grad():
        return torch.softmax(model(x)["logits"], dim=1).double().numpy()


@pytest.mark.parametrize("world", [1, 2])
def test_measured_td_equals_a_direct_computation_after_kills_mid_epoch(synthetic_dataset,
                                                                       tmp_path, world):
    run_dir = tmp_path / "run"
    argv = args(synthetic_dataset, run_dir, "label_dispersion")
    ckpt = run_dir / "work" / "cycle_0000" / "ckpt"
    snapshots = []
    for epoch in (1, 2):  # kill -9 at step 1 of epoch 1, then of epoch 2 (of the resumed run)
        who = "@rank1" if world == 2 else ""
        crashed = launch(world, argv, env={"TIDAL_DIST_CRASH_AT": f"epoch:{epoch}:1{who}"})
        assert crashed.returncode != 0, tail(crashed)
        latest = ckpt / (ckpt / "latest").read_text().strip()
        assert latest.name == f"e{epoch:04d}_s000000"  # the epoch boundary before the kill
        kept = tmp_path / f"snap{epoch}"
        shutil.copytree(latest, kept)
        snapshots.append(kept)
    done = launch(world, argv)
    assert done.returncode == 0, tail(done)

    cycle = run_dir / "cycles" / "cycle_0000"
    ids = np.load(cycle / "measured_td" / "ids.npy")
    with np.load(cycle / "scores.npz") as scores:
        np.testing.assert_array_equal(ids, scores["ids"])  # the candidates scoring ranked
        scored = scores["uncertainty"]
    assert len(ids) == 30
    weights = [torch.load(s / "train_state.pt", weights_only=True)["model"] for s in snapshots]
    weights.append(torch.load(cycle / "model.pt", weights_only=True))
    probs = [softmax_of(run_dir, w, ids) for w in weights]  # after epochs 0, 1, 2
    for t, folder in enumerate([s / "measured_td" for s in snapshots] + [cycle / "measured_td"]):
        count = np.load(folder / "count.npy")
        assert (count == t + 1).all(), folder  # exact: once per measured epoch, on any world
        total = np.sum(probs[:t + 1], axis=0)
        np.testing.assert_allclose(np.load(folder / "sum.npy"), total, rtol=1e-5, atol=1e-6)
        votes = sum(np.eye(5, dtype=np.int64)[p.argmax(axis=1)] for p in probs[:t + 1])
        np.testing.assert_array_equal(np.load(folder / "votes.npy"), votes)
    # label dispersion, 1 - (votes of the modal label) / T, is what scoring ranked by
    np.testing.assert_allclose(scored, 1.0 - votes.max(axis=1) / EPOCHS)

    m = json.loads((cycle / "metrics.json").read_text())
    cost = m["measured_td"]
    assert cost["measurements"] == EPOCHS and cost["every"] == 1
    assert cost["seconds"] > 0 and cost["ratio_to_training"] > 0
    assert m["seconds"]["measure_td"] == cost["seconds"]
    assert m["resumed_from"]["epoch"] == 2 and m["world_size"] == world
    assert cost["path"] == "decoded"  # the default: candidates decoded once per cycle


def test_streamed_and_decoded_passes_give_the_same_run(synthetic_dataset, tmp_path):
    """train.data_path=loader streams every evaluation, scoring and measurement pass from the
    shards; the default keeps the test split and the pool decoded on the device: the same
    running sums, votes and counts, the same accuracies, scores and queries, on 2 ranks.
    (Without augmentation, so that the two training paths train the same model.)"""
    runs = {}
    for data_path in ("loader", "auto"):
        run_dir = tmp_path / data_path
        proc = launch(2, [*args(synthetic_dataset, run_dir, "label_dispersion"),
                          f"train.data_path={data_path}", "data.train_transform=none"])
        assert proc.returncode == 0, tail(proc)
        cycle = run_dir / "cycles" / "cycle_0000"
        metrics = json.loads((cycle / "metrics.json").read_text())
        assert metrics["measured_td"]["path"] == ("streamed" if data_path == "loader" else "decoded")
        runs[data_path] = {f: np.load(cycle / "measured_td" / f"{f}.npy")
                           for f in ("ids", "sum", "votes", "count")}
        with np.load(cycle / "scores.npz") as scores:
            runs[data_path].update(scored_ids=scores["ids"], uncertainty=scores["uncertainty"])
        with np.load(cycle / "queried.npz") as queried:
            runs[data_path]["queried"] = queried["ids"]
        runs[data_path]["test_per_class_correct"] = np.array(metrics["test_per_class_correct"])
        assert sum(metrics["test_per_class_seen"]) == metrics["test_samples"] > 0
    for name, streamed in runs["loader"].items():
        np.testing.assert_allclose(runs["auto"][name], streamed, rtol=1e-6, atol=1e-9, err_msg=name)


def test_measured_strategies_score_the_running_mean(synthetic_dataset, tmp_path):
    """td_measured_entropy and td_measured_margin rank by the entropy / margin of sum / count,
    every 2 epochs (and after the last): here after epochs 1 and 2."""
    for strategy in ("td_measured_entropy", "td_measured_margin"):
        run_dir = tmp_path / strategy
        argv = [a.replace("al.td_measure_every=1", "al.td_measure_every=2")
                for a in args(synthetic_dataset, run_dir, strategy)]
        proc = run_module(argv)
        assert proc.returncode == 0, tail(proc)
        cycle = run_dir / "cycles" / "cycle_0000"
        count = np.load(cycle / "measured_td" / "count.npy")
        assert (count == 2).all()  # after epoch 2 (every 2nd) and epoch 3 (the last)
        mean = np.load(cycle / "measured_td" / "sum.npy") / 2
        with np.load(cycle / "scores.npz") as scores:
            u, reported = scores["uncertainty"], scores["reported"]
        if strategy == "td_measured_entropy":
            expected = -(mean * np.log(np.clip(mean, 1e-300, None))).sum(axis=1)
            np.testing.assert_allclose(u, expected, rtol=1e-9)
        else:
            top = np.sort(mean, axis=1)
            np.testing.assert_allclose(reported, top[:, -1] - top[:, -2], rtol=1e-9)
            np.testing.assert_allclose(u, -reported)
        assert json.loads((cycle / "metrics.json").read_text())["measured_td"]["measurements"] == 2
