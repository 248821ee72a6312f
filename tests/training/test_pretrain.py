"""`tidal-dist pretrain`: SimCLR's NT-Xent against a hand computation, a short pretrain on a tiny
pool that lowers the loss and writes weights a typiclust run loads strictly and starts from, a
resume after kill -9, and bad input refused with exit 2 and nothing written."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.mp import run_module, tail
from tidal_dist.cli import main
from tidal_dist.config import ModelConfig
from tidal_dist.data.manifest import load_manifest
from tidal_dist.models.backbones import build_backbone
from tidal_dist.objectives.nt_xent import nt_xent

TINY = ["model.backbone=small_cnn", "model.width=4", "data.num_workers=0"]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """96 + 20 RGB images of smooth colour blobs (a random 2x2 colour grid, upsampled) in an image
    folder of 4 classes: two crops of one image share its colours, so SimCLR has something to
    learn in a few steps (on the synthetic source's pixel noise it stays at chance)."""
    from tidal_dist.data.shards import prepare

    rng = np.random.default_rng(0)
    raw = tmp_path_factory.mktemp("blobs")
    for split, n in (("train", 96), ("val", 20)):
        low = torch.from_numpy(rng.random((n, 3, 2, 2))).float()
        images = torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear",
                                                 align_corners=False)
        for i in range(n):
            folder = raw / split / f"c{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    root = tmp_path_factory.mktemp("blob_shards") / "shards"
    prepare(f"imagefolder:{raw}", root, shard_size=48, progress=False)
    return root


def test_nt_xent_equals_the_formula_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 1.0], [-1.0, 1.0], [0.0, -3.0]])
    tau = 0.5
    z = [[x / math.hypot(*v) for x in v] for v in torch.cat([a, b]).tolist()]
    n = len(a)

    def sim(i, j):
        return sum(x * y for x, y in zip(z[i], z[j]))

    def l(i, j):  # Chen et al. 2020, Eq. (1)
        den = sum(math.exp(sim(i, k) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(i, j) / tau) / den)

    expected = sum(l(k, n + k) + l(n + k, k) for k in range(n)) / (2 * n)
    assert nt_xent(a, b, tau).item() == pytest.approx(expected, rel=1e-6)
    # identical views are easier than swapped ones
    assert nt_xent(a, a, tau) < nt_xent(a, b, tau)


def test_pretrain_lowers_the_loss_and_a_typiclust_run_starts_from_its_weights(blobs, tmp_path,
                                                                               capsys):
    root = blobs
    out = tmp_path / "w" / "simclr.safetensors"
    args = ["pretrain", f"data.root={root}", *TINY, "--out", str(out), "--epochs", "6",
            "--batch-size", "32", "--lr", "0.01"]
    assert main(args) == 0
    record = json.loads((tmp_path / "w" / "simclr.pretrain.json").read_text())
    losses = record["epoch_losses"]
    assert len(losses) == 6 and record["images"] == 96
    assert min(losses[-2:]) < losses[0] - 0.1, losses  # log(2N - 1) = 4.14 at chance
    assert not (tmp_path / "w" / "simclr.safetensors.resume.pt").exists()
    assert f"model.weights={out}" in capsys.readouterr().out
    # the same command again: nothing to do, the file untouched
    stamp = out.stat().st_mtime_ns
    assert main(args) == 0 and out.stat().st_mtime_ns == stamp

    # model.weights loads it with strict key checks (a missing or extra key is a UserError)
    saved = load_file(str(out))
    manifest = load_manifest(root)
    net = build_backbone(ModelConfig(backbone="small_cnn", width=4, weights=str(out)),
                         manifest.num_classes, 3)
    assert set(saved) == set(net.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    fresh = build_backbone(ModelConfig(backbone="small_cnn", width=4), manifest.num_classes, 3)
    assert not torch.equal(fresh.stages[0][0].weight, saved["stages.0.0.weight"])

    # weights of another width: refused before the run writes anything
    other = tmp_path / "other_run"
    proc = run_module(["run", f"data.root={root}", *TINY, "model.width=8", f"model.weights={out}",
                       "al.initial_strategy=typiclust", "al.initial=8", f"run.dir={other}"])
    assert proc.returncode == 2 and f"model weights file '{out}' does not fit" in proc.stderr, \
        tail(proc)
    assert "shape mismatches" in proc.stderr and "Traceback" not in proc.stderr
    assert not other.exists()

    run_dir = tmp_path / "run"
    proc = run_module(["run", f"data.root={root}", *TINY, f"model.weights={out}",
                       "al.initial_strategy=typiclust", "al.initial=8", "al.budget=4",
                       "al.cycles=1", "al.subset_size=60", "al.strategy=random",
                       "train.epochs=1", "train.batch_size=8", "train.checkpoint_every=0",
                       f"run.dir={run_dir}"])
    assert proc.returncode == 0, tail(proc)
    with np.load(run_dir / "initial.npz") as z:
        # typicality scores: > 0, or 0 for a point alone in its cluster
        assert len(np.unique(z["ids"])) == 8 and np.all(z["score"] >= 0) and z["score"].max() > 0
    with np.load(run_dir / "cycles" / "cycle_0000" / "labeled.npz") as lab:
        with np.load(run_dir / "initial.npz") as z:
            assert np.array_equal(lab["ids"], z["ids"])


def test_pretrain_resumes_after_kill_9_with_the_same_losses(blobs, tmp_path, capsys):
    root = blobs
    base = ["pretrain", f"data.root={root}", *TINY, "--epochs", "3", "--batch-size", "32"]
    whole = tmp_path / "whole.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses below (OMP_NUM_THREADS=1): the same sums
    try:
        assert main([*base, "--out", str(whole)]) == 0
    finally:
        torch.set_num_threads(threads)
    cut = tmp_path / "cut.safetensors"
    proc = run_module([*base, "--out", str(cut)], env={"TIDAL_DIST_CRASH_AT": "epoch:2:1"})
    assert proc.returncode == -9, tail(proc)
    assert not cut.exists() and (tmp_path / "cut.safetensors.resume.pt").exists()
    proc = run_module([*base, "--out", str(cut)])
    assert proc.returncode == 0 and "resuming after epoch 2 of 3" in proc.stderr, tail(proc)
    expected = json.loads((tmp_path / "whole.pretrain.json").read_text())["epoch_losses"]
    got = json.loads((tmp_path / "cut.pretrain.json").read_text())["epoch_losses"]
    assert got == pytest.approx(expected, rel=1e-4)
    # another setting on the same --out: its checkpoint is refused, never overwritten
    assert main([*base[:-4], "--epochs", "3", "--batch-size", "16", "--out", str(whole)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--out", "{tmp}/w.pt"], "expected a .safetensors file name"),
    (["--out", "{tmp}/w.safetensors", "--batch-size", "1"], "--batch-size must be >= 2"),
    (["--out", "{tmp}/w.safetensors", "--temperature", "0"], "--temperature must be > 0"),
    (["--out", "{tmp}/w.safetensors", "--epochs", "0"], "--epochs must be >= 1"),
    (["--out", "{tmp}/w.safetensors", "--batch-size", "500"], "exceeds the 96 pool images"),
    (["--out", "{tmp}/w.safetensors", "model.backbone=nope"], "config key 'model.backbone' expects"),
    (["--out", "{tmp}/w.safetensors", "data.root={tmp}/nowhere"], "nowhere"),
])
def test_bad_input_is_refused_with_exit_2_and_nothing_written(blobs, tmp_path, capsys, extra,
                                                              message):
    root = blobs
    args = [a.format(tmp=tmp_path) for a in extra]
    overrides = [a for a in args if "=" in a]  # the KEY=VALUE words before the options
    options = [a for a in args if "=" not in a]
    rc = main(["pretrain", f"data.root={root}", *TINY, *overrides, "--epochs", "1", *options])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("w*"))
