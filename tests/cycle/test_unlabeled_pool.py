"""Unlabeled and partly labeled pools: an image folder's pool/ prepares without labels, every
label-needing setting refuses it (exit 2), and a file-oracle run on a partly labeled pool starts
from the known labels, asks for the rest by file name and reports accuracy as unknown."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.cycle.test_loop import loop_args
from tests.mp import run_module, tail
from tidal_dist.config import load_config
from tidal_dist.cycle.plan import make_plan
from tidal_dist.data.manifest import load_keys, load_labels, load_manifest
from tidal_dist.data.shards import prepare
from tidal_dist.job.errors import UserError
from tidal_dist.report.collect import collect

CLASSES = ["cat", "dog", "owl"]


def write_pool(folder, n, seed=0):
    """Images at several depths, no class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / f"batch{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(sub / f"photo{i}.png")


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    base = tmp_path_factory.mktemp("unlabeled")
    write_pool(base / "images" / "pool", 30)
    (base / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = base / "shards"
    prepare(f"imagefolder:{base / 'images'}", out, shard_size=16, progress=False,
            source_options={"classes": str(base / "classes.txt")})
    return out


@pytest.fixture(scope="module")
def partly_labeled(tmp_path_factory):
    base = tmp_path_factory.mktemp("partly")
    root = base / "images"
    for c, name in enumerate(CLASSES):
        write_pool(root / "train" / name, 6, seed=10 + c)
    write_pool(root / "pool", 30, seed=1)
    out = base / "shards"
    prepare(f"imagefolder:{root}", out, shard_size=16, progress=False)
    return out


def plan(root, tmp_path, **overrides):
    cfg = load_config(None, loop_args(root, tmp_path / "run", **overrides))
    return make_plan(cfg, 1, check_disk=False)


def test_pool_without_class_folders_prepares_unlabeled(unlabeled):
    manifest = load_manifest(unlabeled)
    pool = manifest.split("pool")
    assert manifest.class_names == CLASSES and pool.num_samples == 30 and pool.labeled_count == 0
    assert manifest.split("test").num_samples == 0  # val/ is optional
    assert (load_labels(unlabeled, "pool") == -1).all()
    keys = load_keys(unlabeled, "pool")
    assert all(k.startswith("pool/batch") for k in keys) and any("/deep/" in k for k in keys)
    assert manifest.image_size == (10, 10)  # every image has the same size, so it is recorded


def test_label_needing_settings_refuse_an_unlabeled_pool(unlabeled, tmp_path):
    with pytest.raises(UserError, match="al.oracle=file"):
        plan(unlabeled, tmp_path)  # the simulated oracle
    with pytest.raises(UserError, match=r"'al.initial': 20 labeled .* only 0 pool samples"):
        plan(unlabeled, tmp_path, **{"al.oracle": "file"})
    with pytest.raises(UserError, match="data.imbalance_ratio"):
        plan(unlabeled, tmp_path, **{"al.oracle": "file", "data.imbalance_ratio": 10})
    with pytest.raises(UserError, match="al.val_size=0"):
        plan(unlabeled, tmp_path, **{"al.oracle": "file", "al.val_size": 5})
    proc = run_module(["run", *loop_args(unlabeled, tmp_path / "cli")])
    assert proc.returncode == 2 and "al.oracle=file" in proc.stderr, tail(proc)
    assert "Traceback" not in proc.stderr


def test_file_oracle_run_on_a_partly_labeled_pool(partly_labeled, tmp_path):
    run_dir = tmp_path / "run"
    args = loop_args(partly_labeled, run_dir, **{"al.oracle": "file", "al.initial": 12, "al.budget": 8,
                                                 "al.cycles": 2, "al.subset_size": "all"})
    proc = run_module(["run", *args])
    assert proc.returncode == 3, tail(proc)  # waiting for a person's labels
    cycle = run_dir / "cycles" / "cycle_0000"
    with np.load(cycle / "labeled.npz") as labeled:
        assert (labeled["labels"] >= 0).all()  # started from known labels only
        known = load_labels(partly_labeled, "pool")[labeled["ids"]]
        np.testing.assert_array_equal(labeled["labels"], known)
    metrics = json.loads((cycle / "metrics.json").read_text())
    assert metrics["accuracy"] is None and metrics["queried_histogram"] is None
    assert "unknown" in (run_dir / "results.md").read_text()
    runs, notes = collect([run_dir])  # the report names it instead of comparing a made-up number
    assert runs == [] and "test accuracy unknown" in notes[0]
    rows = [r.split(",") for r in (run_dir / "queries" / "cycle_0.csv").read_text().splitlines()]
    keys = load_keys(partly_labeled, "pool")
    assert rows[0][-1] == "original" and len(rows) == 9
    assert all(row[-1] == keys[int(row[0])] for row in rows[1:])
