"""The GPU's precision and layout paths, run on the CPU through the CLI: a TiDAL cycle under bf16
autocast (train.mixed_precision=bf16), with channels_last, and compiled (train.compile=true), for a
built-in and a timm backbone, against the same cycle in fp32.

Stated tolerance (bf16 keeps 8 bits of mantissa, ~3 significant digits, and the difference grows
over the steps): TD counts exact; every loss finite; the per-sample TD means (sum / count) within
0.05 of fp32's on average and 0.4 at most (a sample whose prediction flips in an early step
moves its whole TD row: a 10-layer timm ResNet under bf16 measured 0.037 and 0.25); test accuracy
within 0.15 (a 40-sample test split: 6 samples)."""

import json

import numpy as np
import pytest

from tests.mp import run_module, tail

# several full cycles per test, each its own process: more than the default 300 s on a busy machine
pytestmark = pytest.mark.timeout(900)

EPOCHS = 2


def cycle(root, run_dir, backbone, *extra):
    args = ["run", f"data.root={root}", "data.num_workers=0", f"model.backbone={backbone}",
            "model.width=4", "model.td_hidden=8", f"train.epochs={EPOCHS}", "train.batch_size=16",
            "train.lr=0.05", "train.checkpoint_every=0", "al.initial=40", "al.budget=8",
            "al.cycles=1", "al.subset_size=40", "al.strategy=tidal_entropy",
            f"run.dir={run_dir}", "run.seed=3", *extra]
    proc = run_module(args, timeout=600)
    assert proc.returncode == 0, tail(proc)
    done = run_dir / "cycles" / "cycle_0000"
    metrics = json.loads((done / "metrics.json").read_text())
    td = {name: np.load(done / "td" / f"{name}.npy") for name in ("ids", "sum", "count")}
    return metrics, td, proc


def check_against(reference, variant):
    (m0, td0, _), (m1, td1, _) = reference, variant
    np.testing.assert_array_equal(td1["ids"], td0["ids"])
    assert (td1["count"] == EPOCHS).all() and (td0["count"] == EPOCHS).all()
    for epoch in m1["train"]:
        assert all(np.isfinite(epoch[k]) for k in ("loss", "ce", "kl"))
    mean0 = td0["sum"] / td0["count"][:, None]
    mean1 = td1["sum"] / td1["count"][:, None]
    np.testing.assert_allclose(mean1.sum(1), 1.0, atol=1e-3)  # still distributions
    gap = np.abs(mean1 - mean0)
    assert gap.mean() < 0.05 and gap.max() < 0.4, (gap.mean(), gap.max())
    assert abs(m1["accuracy"] - m0["accuracy"]) <= 0.15


def test_bf16_and_channels_last_cycles_of_a_built_in_backbone_match_fp32(synthetic_dataset,
                                                                         tmp_path):
    fp32 = cycle(synthetic_dataset, tmp_path / "fp32", "small_cnn", "train.mixed_precision=no")
    bf16 = cycle(synthetic_dataset, tmp_path / "bf16", "small_cnn", "train.mixed_precision=bf16")
    assert "bf16=True" in bf16[2].stderr + bf16[2].stdout
    assert not np.array_equal(bf16[1]["sum"], fp32[1]["sum"])  # autocast did run
    check_against(fp32, bf16)
    layout = cycle(synthetic_dataset, tmp_path / "cl", "small_cnn", "train.mixed_precision=no",
                   "train.channels_last=true")
    check_against(fp32, layout)


def test_a_timm_backbone_under_bf16_and_channels_last_matches_fp32(synthetic_dataset, tmp_path):
    # the GPU's defaults together, in one cycle
    fp32 = cycle(synthetic_dataset, tmp_path / "fp32", "timm:resnet10t", "train.mixed_precision=no")
    gpu_like = cycle(synthetic_dataset, tmp_path / "bf16", "timm:resnet10t",
                     "train.mixed_precision=bf16", "train.channels_last=true")
    assert "bf16=True" in gpu_like[2].stderr + gpu_like[2].stdout
    assert not np.array_equal(gpu_like[1]["sum"], fp32[1]["sum"])
    check_against(fp32, gpu_like)


def test_a_compiled_cycle_matches_the_eager_one(synthetic_dataset, tmp_path):
    eager = cycle(synthetic_dataset, tmp_path / "eager", "small_cnn", "train.mixed_precision=no")
    compiled = cycle(synthetic_dataset, tmp_path / "compiled", "small_cnn",
                     "train.mixed_precision=no", "train.compile=true")
    check_against(eager, compiled)
