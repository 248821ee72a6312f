"""Unlabeled and partly labeled pools: an image folder's pool/ prepares without labels, every
label-needing setting refuses it (exit 2), and a file-oracle run on an unlabeled pool asks a person
for cycle 0's set by file name, trains on their labels only and reports accuracy as unknown."""

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
    # a person labels cycle 0's set first: an unlabeled pool is what the file oracle is for
    assert plan(unlabeled, tmp_path, **{"al.oracle": "file", "al.initial": 6, "al.budget": 4,
                                        "al.subset_size": 12}) is not None
    with pytest.raises(UserError, match="data.imbalance_ratio"):
        plan(unlabeled, tmp_path, **{"al.oracle": "file", "data.imbalance_ratio": 10})
    with pytest.raises(UserError, match="al.val_size=0"):
        plan(unlabeled, tmp_path, **{"al.oracle": "file", "al.val_size": 5})
    proc = run_module(["run", *loop_args(unlabeled, tmp_path / "cli")])
    assert proc.returncode == 2 and "al.oracle=file" in proc.stderr, tail(proc)
    assert "Traceback" not in proc.stderr


def test_file_oracle_run_on_an_unlabeled_pool_never_reads_a_label_it_lacks(unlabeled, tmp_path):
    import csv

    run_dir = tmp_path / "run"
    args = loop_args(unlabeled, run_dir, **{"al.oracle": "file", "al.initial": 9, "al.budget": 6,
                                            "al.cycles": 2, "al.subset_size": "all",
                                            "al.val_size": 0})
    first = run_module(["run", *args])
    assert first.returncode == 3, tail(first)  # cycle 0's set, before any training
    keys = load_keys(unlabeled, "pool")
    with open(run_dir / "queries" / "initial.csv") as f:
        initial = list(csv.DictReader(f))
    assert len(initial) == 9 and all(r["original_key"] == keys[int(r["id"])] for r in initial)
    given = {int(r["id"]): CLASSES[n % 3] for n, r in enumerate(initial)}
    (run_dir / "labels").mkdir()
    (run_dir / "labels" / "initial.csv").write_text(
        "label,id\n" + "".join(f"{name},{i}\n" for i, name in given.items()))
    second = run_module(["run", *args])
    assert second.returncode == 3, tail(second)  # now cycle 0's queries
    cycle = run_dir / "cycles" / "cycle_0000"
    with np.load(cycle / "labeled.npz") as labeled:  # the person's labels, none made up
        assert {int(i): CLASSES[int(c)] for i, c in zip(labeled["ids"], labeled["labels"])} == given
    metrics = json.loads((cycle / "metrics.json").read_text())
    assert metrics["accuracy"] is None and metrics["queried_histogram"] is None
    assert "unknown" in (run_dir / "results.md").read_text()
    runs, notes = collect([run_dir])  # the report names it instead of comparing a made-up number
    assert runs == [] and "test accuracy unknown" in notes[0]
    with open(run_dir / "queries" / "cycle_0.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r["original_key"] == keys[int(r["id"])] for r in rows)
    assert not set(int(r["id"]) for r in rows) & set(given)
