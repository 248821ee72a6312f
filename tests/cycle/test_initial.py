"""Cycle 0's initial set: al.initial_strategy=typiclust on a pretrained backbone (simulated oracle:
chosen once, kept in initial.npz, trained on), and refused without pretrained weights."""

import numpy as np
import pytest
import torch
import torchvision

from tests.mp import run_module, tail
from tidal_dist.config import load_config
from tidal_dist.data.manifest import load_labels
from tidal_dist.job.errors import UserError


def test_typiclust_needs_a_pretrained_backbone(synthetic_dataset, tmp_path):
    with pytest.raises(UserError, match="al.initial_strategy.*no pretrained weights"):
        load_config(None, ["al.initial_strategy=typiclust", "model.backbone=resnet18"])
    proc = run_module(["run", f"data.root={synthetic_dataset}", f"run.dir={tmp_path / 'run'}",
                       "al.initial_strategy=typiclust"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.weights" in proc.stderr and not (tmp_path / "run").exists()


def test_typiclust_initial_set_with_the_simulated_oracle(make_dataset, tmp_path):
    root = make_dataset("synthetic:90,3,16x16,3", 30)
    weights = tmp_path / "resnet18.pt"  # stands for downloaded ImageNet weights: same layout
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    run_dir = tmp_path / "run"
    args = ["run", f"data.root={root}", "data.num_workers=0", "model.backbone=resnet18",
            f"model.weights={weights}", "train.epochs=1", "train.batch_size=8",
            "train.checkpoint_every=0", "al.initial=6", "al.budget=4", "al.cycles=1",
            "al.subset_size=40", "al.initial_strategy=typiclust", "al.strategy=entropy",
            f"run.dir={run_dir}"]
    proc = run_module(args)
    assert proc.returncode == 0, tail(proc)
    with np.load(run_dir / "initial.npz") as z:
        chosen, typical = z["ids"], z["score"]
    # typicality is 0 only for a point alone in its cluster (selection/typiclust.py)
    assert len(chosen) == 6 and len(np.unique(chosen)) == 6
    assert np.all(np.isfinite(typical)) and np.all(typical >= 0) and np.any(typical > 0)
    with np.load(run_dir / "cycles" / "cycle_0000" / "labeled.npz") as lab:
        assert np.array_equal(lab["ids"], chosen)
        assert np.array_equal(lab["labels"], load_labels(root, "pool")[chosen])
    assert not (run_dir / "work").exists()
