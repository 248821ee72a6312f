"""train.freeze=backbone's frozen-feature path (training/frozen_features.py) through the CLI: the
epochs train on backbone outputs computed once per cycle, and record the same TD as the image path
(which, without augmentation, sees the same inputs): counts exact on 1 and 2 processes, sums equal
within float tolerance, the same queries."""

import json

import numpy as np

from tests.mp import run_module, tail, torchrun

EPOCHS = 3


def args(root, run_dir, *extra):
    return ["run", f"data.root={root}", "data.num_workers=0", "data.train_transform=none",
            "model.backbone=small_cnn", "model.width=4", "model.td_hidden=8",
            f"train.epochs={EPOCHS}", "train.batch_size=16", "train.lr=0.05",
            "train.freeze=backbone", "train.checkpoint_every=0", "al.initial=40", "al.budget=8",
            "al.cycles=2", "al.subset_size=40", "al.strategy=tidal_entropy",
            f"run.dir={run_dir}", "run.seed=4", *extra]


def outputs(run_dir, k):
    done = run_dir / "cycles" / f"cycle_{k:04d}"
    td = {n: np.load(done / "td" / f"{n}.npy") for n in ("ids", "sum", "count")}
    with np.load(done / "queried.npz") as q:
        queried = np.sort(q["ids"])
    return json.loads((done / "metrics.json").read_text()), td, queried


def test_the_frozen_feature_path_records_the_image_paths_td(synthetic_dataset, tmp_path):
    image = run_module(args(synthetic_dataset, tmp_path / "image", "train.feature_cache=off"))
    assert image.returncode == 0, tail(image)
    assert "frozen-feature path" not in image.stderr
    frozen = run_module(args(synthetic_dataset, tmp_path / "frozen"))
    assert frozen.returncode == 0, tail(frozen)
    assert "training data: frozen-feature path (40 x " in frozen.stderr
    two = torchrun(2, ["-m", "tidal_dist", *args(synthetic_dataset, tmp_path / "two",
                                                  "data.num_workers=1")])
    assert two.returncode == 0, tail(two)
    for k, labeled in ((0, 40), (1, 48)):
        m0, td0, q0 = outputs(tmp_path / "image", k)
        for run in ("frozen", "two"):
            m1, td1, q1 = outputs(tmp_path / run, k)
            np.testing.assert_array_equal(td1["ids"], td0["ids"])
            assert len(td1["ids"]) == labeled and (td1["count"] == EPOCHS).all()
            np.testing.assert_allclose(td1["sum"], td0["sum"], atol=2e-4)
            np.testing.assert_array_equal(q1, q0)
            assert abs(m1["accuracy"] - m0["accuracy"]) <= 0.05
