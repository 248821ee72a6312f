"""Every strategy, and through them every objective (ce, tidal, lloss), with timm backbones through
the CLI: tiny random-init timm models saved to local safetensors files and loaded back as
model.weights, a CNN on one process and a ViT on two. Each launch is one `tidal-dist sweep` that
runs all the strategies in turn in the same processes. The models are timm's own test
architectures (test_convnext, test_vit: the families' real code at 0.2-0.3M parameters), so the
sweeps time the strategies rather than 5M-parameter models; tests/models/test_timm_backbone.py
covers the full-size resnet10t and vit_tiny."""

import json

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from tests.mp import run_module, tail, torchrun
from tidal_dist.strategies import registry

# several full cycles per test, each its own process: more than the default 300 s on a busy machine
pytestmark = pytest.mark.timeout(900)

AUTO_OBJECTIVE = {"tidal_entropy": "tidal", "tidal_margin": "tidal", "tidal_cluster": "tidal",
                  "lloss": "lloss"}


@pytest.fixture(scope="module")
def dataset(make_dataset):
    return make_dataset("synthetic:120,4,32x32,3", 40)


def weights(tmp_path, name):
    torch.manual_seed(0)
    path = tmp_path / f"{name}.safetensors"
    save_file(timm.create_model(name, num_classes=10).state_dict(), path)  # 10 classes: replaced
    return path


def sweep_args(root, out, backbone, weights_file):
    config = out.parent / "protocol.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(root), "num_workers": 0, "image_size": 32},
        "model": {"backbone": f"timm:{backbone}", "weights": str(weights_file), "td_hidden": 8},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "checkpoint_every": 0},
        "al": {"initial": 20, "budget": 6, "cycles": 1, "subset_size": 30,
               "score_batch_size": 16, "cluster_factor": 2, "mc_passes": 2}}))
    return ["sweep", "--config", str(config), "--strategies", ",".join(sorted(registry())),
            "--seeds", "1", "--out", str(out)]


def check_runs(out, world):
    for name in sorted(registry()):
        run = out / name / "seed_1"
        config = (run / "config.yaml").read_text()
        assert "interpolation: bicubic" in config  # filled from the weights' pretrained config
        done = run / "cycles" / "cycle_0000"
        m = json.loads((done / "metrics.json").read_text())
        assert m["world_size"] == world and m["objective"] == AUTO_OBJECTIVE.get(name, "ce")
        assert np.isfinite(m["train"][0]["loss"]) and 0 <= m["accuracy"] <= 1
        with np.load(done / "queried.npz") as q:
            assert len(np.unique(q["ids"])) == 6 and np.isfinite(q["reported"]).all()
        with np.load(done / "labeled.npz") as lab:
            labeled = np.sort(lab["ids"])
        np.testing.assert_array_equal(np.load(done / "td" / "ids.npy"), labeled)
        assert (np.load(done / "td" / "count.npy") == 1).all()  # one visit each, exactly


def test_every_strategy_with_a_timm_cnn_on_one_process(dataset, tmp_path):
    out = tmp_path / "sweep"
    proc = run_module(sweep_args(dataset, out, "test_convnext", weights(tmp_path, "test_convnext")),
                      timeout=900)
    assert proc.returncode == 0, tail(proc)
    assert "classifier (head.fc.weight, head.fc.bias) replaced" in proc.stderr + proc.stdout
    check_runs(out, 1)


def test_every_strategy_with_a_timm_vit_on_two_processes(dataset, tmp_path):
    out = tmp_path / "sweep"
    proc = torchrun(2, ["-m", "tidal_dist", *sweep_args(
        dataset, out, "test_vit", weights(tmp_path, "test_vit"))],
        timeout=900)
    assert proc.returncode == 0, tail(proc)
    check_runs(out, 2)
