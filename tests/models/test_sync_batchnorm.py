"""train.sync_batchnorm: BatchNorm statistics over the global batch (CPU and GPU), and with it the
same TD records, accuracy and selections for 1, 2 and 3 processes."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.mp import tail, torchrun
from tidal_dist.models.sync_batchnorm import GlobalBatchNorm2d, convert_batchnorm


def seeded_bn(seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, generator=g) + 0.5)
        bn.bias.copy_(torch.rand(3, generator=g))
    return bn, g


def test_one_process_matches_torch_batchnorm():
    bn, g = seeded_bn()
    ours = convert_batchnorm(nn.Sequential(bn.__class__(3)))[0]
    ours.load_state_dict(bn.state_dict())
    assert isinstance(ours, GlobalBatchNorm2d)
    x = torch.randn(6, 3, 5, 4, generator=g) * 2 + 5
    w = torch.randn(6, 3, 5, 4, generator=g)
    for _ in range(3):  # running statistics over several steps
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        (bn(xa) * w).sum().backward()
        (ours(xb) * w).sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, bn.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, bn.bias.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, bn.running_mean)
    torch.testing.assert_close(ours.running_var, bn.running_var)
    assert int(ours.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    bn.eval(), ours.eval()
    torch.testing.assert_close(ours(x), bn(x))


def test_conversion_keeps_every_parameter_and_buffer():
    from tidal_dist.config import ModelConfig
    from tidal_dist.models import build_model

    model = build_model(ModelConfig(backbone="resnet18_cifar"), 10, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_batchnorm(model)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert sum(isinstance(m, GlobalBatchNorm2d) for m in converted.modules()) == 20
    after = converted.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_three_ranks_equal_one_batchnorm_over_the_whole_batch(tmp_path):
    proc = torchrun(3, ["tests/workers/sync_bn_worker.py", str(tmp_path), "6"])
    assert proc.returncode == 0, tail(proc)
    got = np.load(tmp_path / "sync_bn.npz")
    bn, g = seeded_bn()
    x = (torch.randn(6, 3, 5, 4, generator=g) * 2 + 5).requires_grad_()
    upstream = torch.randn(6, 3, 5, 4, generator=g)
    y = bn(x)
    (y * upstream).sum().backward()
    np.testing.assert_allclose(got["y"], y.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["grad_x"], x.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["grad_w"], bn.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["grad_b"], bn.bias.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["running_mean"], bn.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got["running_var"], bn.running_var.numpy(), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# End to end: `tidal-dist run`, 2 cycles. The global batch (12) divides by 1, 2 and 3, and the
# labeled sets (36, then 48) are multiples of it, so no step has padding rows.

CYCLES = 2


def run_args(root, run_dir, sync, workers):
    settings = {"data.root": root, "data.num_workers": workers, "model.backbone": "small_cnn",
                "model.width": 4, "train.epochs": 2, "train.batch_size": 12, "train.lr": 0.05,
                "train.sync_batchnorm": sync, "train.checkpoint_every": 0, "al.initial": 36,
                "al.budget": 12, "al.cycles": CYCLES, "al.subset_size": 60,
                "al.score_batch_size": 16, "run.dir": run_dir, "run.seed": 7,
                "run.deterministic": True}
    return ["-m", "tidal_dist", "run", *[f"{k}={v}" for k, v in settings.items()]]


def outputs(run_dir):
    out = []
    for k in range(CYCLES):
        d = run_dir / "cycles" / f"cycle_{k:04d}"
        q = np.load(d / "queried.npz")
        out.append({"sum": np.load(d / "td" / "sum.npy"), "count": np.load(d / "td" / "count.npy"),
                    "queried": q["ids"], "uncertainty": q["uncertainty"],
                    "accuracy": json.loads((d / "metrics.json").read_text())["accuracy"],
                    "world": json.loads((d / "metrics.json").read_text())["world_size"]})
    return out


@pytest.fixture(scope="module")
def runs(synthetic_dataset, tmp_path_factory):
    done = {}
    for key, world, workers in (("sync1", 1, 0), ("sync2", 2, 1), ("sync3", 3, 2),
                                ("plain3", 3, 1)):
        run_dir = tmp_path_factory.mktemp(key) / "run"
        proc = torchrun(world, run_args(synthetic_dataset, run_dir, key.startswith("sync"), workers),
                        timeout=400)
        assert proc.returncode == 0, tail(proc)
        done[key] = outputs(run_dir)
    return done


def test_sync_batchnorm_gives_the_same_run_for_1_2_3_processes(runs):
    base = runs["sync1"]
    for key in ("sync2", "sync3"):
        for k, (a, b) in enumerate(zip(runs[key], base)):
            assert a["world"] == int(key[-1])
            np.testing.assert_array_equal(a["count"], b["count"])
            np.testing.assert_allclose(a["sum"], b["sum"], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{key} cycle {k}: TD sums")
            assert a["accuracy"] == b["accuracy"], f"{key} cycle {k}"
            np.testing.assert_array_equal(a["queried"], b["queried"], err_msg=f"{key} cycle {k}")
            np.testing.assert_allclose(a["uncertainty"], b["uncertainty"], rtol=1e-4, atol=1e-6)


def test_without_it_the_world_size_changes_the_td_records(runs):
    """The control: per-rank BatchNorm on 3 processes is a different training."""
    a, b = runs["plain3"][0], runs["sync1"][0]
    assert not np.allclose(a["sum"], b["sum"], rtol=1e-4, atol=1e-5)
