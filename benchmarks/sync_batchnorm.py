"""Training-step time with train.sync_batchnorm (GlobalBatchNorm2d) / with torch's BatchNorm2d.

    python benchmarks/sync_batchnorm.py [--steps 8] [--backbones small_cnn,resnet18_cifar]

One process: this measures the unfused arithmetic of GlobalBatchNorm2d (its statistics,
normalisation and their backward as separate ops instead of one fused kernel), not the
collectives, which one process does not run. Under DDP it adds 2 all-reduces per BatchNorm layer
per step (forward and backward, 2C+1 float64 numbers each): the count is reported. Both variants
run interleaved in one process from the same weights; the ratio is of medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write  # noqa: E402
from tidal_dist.config import ModelConfig  # noqa: E402
from tidal_dist.models import build_model  # noqa: E402
from tidal_dist.models.sync_batchnorm import GlobalBatchNorm2d, convert_batchnorm  # noqa: E402


def bench(backbone: str, batch: int, steps: int, size: int, channels: int, device: str) -> dict:
    torch.manual_seed(0)
    plain = build_model(ModelConfig(backbone=backbone, width=16), 10, channels).to(device)
    synced = convert_batchnorm(copy.deepcopy(plain))
    layers = sum(isinstance(m, GlobalBatchNorm2d) for m in synced.modules())
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizers = {id(m): torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, synced)}

    def step(model):
        out = model(x)
        # The TD module in the graph too, as in a TiDAL step; its term is zero so both variants
        # optimise the same loss.
        loss = F.cross_entropy(out["logits"], y) + out["td_logits"].float().logsumexp(1).mean() * 0
        loss.backward()
        optimizers[id(model)].step()
        optimizers[id(model)].zero_grad(set_to_none=True)

    def timed(model):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(2):
        step(plain), step(synced)
    times = {"plain": [], "sync": []}
    for _ in range(steps):
        times["plain"].append(timed(plain))
        times["sync"].append(timed(synced))
    p, s = statistics.median(times["plain"]), statistics.median(times["sync"])
    return {"backbone": backbone, "device": device, "batch": batch,
            "input": f"{channels}x{size}x{size}", "batchnorm_layers": layers,
            "allreduces_per_step_under_ddp": 2 * layers, "plain_step_s": p, "sync_step_s": s,
            "ratio": s / p}


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--backbones", default="small_cnn,resnet18_cifar")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, results = [], []
    for backbone in args.backbones.split(","):
        size, channels = (32, 3) if device == "cuda" else (28, 1)
        steps = args.steps or (30 if backbone == "small_cnn" or device == "cuda" else 6)
        r = bench(backbone, args.batch, steps, size, channels, device)
        results.append(r)
        rows.append([backbone, device, r["input"], r["batch"], r["batchnorm_layers"],
                     f"{r['plain_step_s'] * 1000:.1f}", f"{r['sync_step_s'] * 1000:.1f}",
                     f"{r['ratio']:.3f}", r["allreduces_per_step_under_ddp"]])
    result = {"results": results}
    write(f"sync_batchnorm_{device}", result,
          ["backbone", "device", "input", "batch", "BN layers", "BatchNorm2d ms/step",
           "GlobalBatchNorm2d ms/step", "sync/plain", "all-reduces per step (DDP)"], rows, out=out)
    return result


if __name__ == "__main__":
    main()
