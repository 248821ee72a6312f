"""train.sync_batchnorm: BatchNorm statistics over the global batch (CPU and GPU), and with it,
for one cycle started from the same state, the same TD records, accuracy and selections for 1, 2
and 3 processes (not across cycles: see the note above the end-to-end tests)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
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
# End to end: `tidal-dist run`. The global batch (12) divides by 1, 2 and 3, and the labeled sets
# (36, then 48) are multiples of it, so no step has padding rows.
#
# What holds, and what these tests check (no more): ONE CYCLE started from the same state (the
# same initial weights, or the same committed previous cycle) gives, with 1, 2 or 3 processes, the
# same TD records, accuracy and selection within float tolerance. Across cycles it does not hold
# id for id: each cycle's all-reduces sum in a world-size-dependent order, so the committed
# weights differ in the last bits (measured 4.3e-5 after 6 epochs), the next cycle warm-starts from
# them and training amplifies the difference (1 vs 3 processes from scratch, 3 cycles: 48/48,
# 45/48, 34/48 queried ids shared). Continuing one committed cycle with 1 and with 3 processes
# agrees (test_one_cycle_from_the_same_committed_cycle_...), so the sampler split, the TD module,
# the augmentation seeds and the LR schedule are not what differs; the rounding is.


def run_args(root, run_dir, sync, workers, cycles=1):
    settings = {"data.root": root, "data.num_workers": workers, "model.backbone": "small_cnn",
                "model.width": 4, "train.epochs": 2, "train.batch_size": 12, "train.lr": 0.05,
                "train.sync_batchnorm": sync, "train.checkpoint_every": 0, "al.initial": 36,
                "al.budget": 12, "al.cycles": cycles, "al.subset_size": 60,
                "al.score_batch_size": 16, "run.dir": run_dir, "run.seed": 7,
                "run.deterministic": True}
    return ["-m", "tidal_dist", "run", *[f"{k}={v}" for k, v in settings.items()]]


def outputs(run_dir, k):
    d = run_dir / "cycles" / f"cycle_{k:04d}"
    q = np.load(d / "queried.npz")
    metrics = json.loads((d / "metrics.json").read_text())
    return {"sum": np.load(d / "td" / "sum.npy"), "count": np.load(d / "td" / "count.npy"),
            "queried": q["ids"], "uncertainty": q["uncertainty"],
            "accuracy": metrics["accuracy"], "world": metrics["world_size"]}


def assert_same_cycle(a, b, what):
    np.testing.assert_array_equal(a["count"], b["count"])
    np.testing.assert_allclose(a["sum"], b["sum"], rtol=1e-4, atol=1e-5, err_msg=f"{what}: TD sums")
    assert a["accuracy"] == b["accuracy"], what
    np.testing.assert_array_equal(a["queried"], b["queried"], err_msg=what)
    np.testing.assert_allclose(a["uncertainty"], b["uncertainty"], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def runs(synthetic_dataset, tmp_path_factory):
    """Cycle 0 from scratch on 1, 2, 3 processes (and 3 without sync_batchnorm); then the 3-process
    run's committed cycle 0 copied twice and cycle 1 run on 1 and on 3 processes."""
    done = {}
    for key, world, workers in (("sync1", 1, 0), ("sync2", 2, 1), ("sync3", 3, 2),
                                ("plain3", 3, 1)):
        run_dir = tmp_path_factory.mktemp(key) / "run"
        proc = torchrun(world, run_args(synthetic_dataset, run_dir, key.startswith("sync"), workers),
                        timeout=400)
        assert proc.returncode == 0, tail(proc)
        done[key] = (run_dir, outputs(run_dir, 0))
    for key, world in (("next1", 1), ("next3", 3)):
        run_dir = tmp_path_factory.mktemp(key) / "run"
        shutil.copytree(done["sync3"][0], run_dir)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        saved["run"]["dir"] = str(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
        proc = torchrun(world, run_args(synthetic_dataset, run_dir, True, 0, cycles=2),
                        timeout=400)
        assert proc.returncode == 0, tail(proc)
        done[key] = (run_dir, outputs(run_dir, 1))
    return {key: out for key, (_, out) in done.items()}


@pytest.mark.timeout(900)  # the first one sets up six real launches
def test_sync_batchnorm_gives_the_same_cycle_for_1_2_3_processes(runs):
    for key in ("sync2", "sync3"):
        assert runs[key]["world"] == int(key[-1])
        assert_same_cycle(runs[key], runs["sync1"], f"{key} cycle 0")


@pytest.mark.timeout(900)  # the first one sets up six real launches
def test_one_cycle_from_the_same_committed_cycle_is_the_same_for_1_and_3_processes(runs):
    assert (runs["next1"]["world"], runs["next3"]["world"]) == (1, 3)
    assert_same_cycle(runs["next1"], runs["next3"], "cycle 1 after the same cycle 0")


@pytest.mark.timeout(900)  # the first one sets up six real launches
def test_without_it_the_world_size_changes_the_td_records(runs):
    """The control: per-rank BatchNorm on 3 processes is a different training."""
    a, b = runs["plain3"], runs["sync1"]
    assert not np.allclose(a["sum"], b["sum"], rtol=1e-4, atol=1e-5)
