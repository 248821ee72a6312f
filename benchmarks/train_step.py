"""Step time of TiDAL training / plain cross-entropy training, same backbone, batch and data.

    python benchmarks/train_step.py [--steps 6] [--backbones small_cnn,resnet18_cifar]

TiDAL's step adds: the TD module's forward/backward, the KL term, the TD target from this rank's
device-resident rows and recording this step's softmax there (dynamics.DeviceTD). Both variants run interleaved in one
process (plain, tidal, plain, tidal, ...) so drift hits both; the ratio is of medians.
Target (issue): 1.05 or less. On a GPU it runs bf16 autocast + channels_last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write  # noqa: E402
from tidal_dist.config import ModelConfig  # noqa: E402
from tidal_dist.models import build_model  # noqa: E402
from tidal_dist.objectives.tidal import tidal_loss  # noqa: E402
from tidal_dist.dynamics.state import DeviceTD, EpochLayout  # noqa: E402


def bench(backbone: str, batch: int, steps: int, size: int, channels: int, device: str) -> dict:
    torch.manual_seed(0)
    num_classes = 10
    model = build_model(ModelConfig(backbone=backbone, width=16), num_classes, channels).to(device)
    on_gpu = device == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    n = batch * 8
    x_all = torch.randn(n, channels, size, size)
    y_all = torch.randint(0, num_classes, (n,))
    td = DeviceTD(np.arange(n), num_classes, EpochLayout(n, 0, 0, 1, batch), 0, torch.device(device))
    valid = torch.ones(batch, dtype=torch.bool, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)

    def batch_at(i):
        lo = (i * batch) % n
        x = x_all[lo:lo + batch].to(device, non_blocking=True)
        if on_gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        return lo, x, y_all[lo:lo + batch].to(device)

    def plain_step(i):
        _, x, y = batch_at(i)
        with autocast:
            logits, _ = model.backbone(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def tidal_step(i, bookkeeping=True):
        lo, x, y = batch_at(i)
        with autocast:
            out = model(x)
        logits, td_logits = out["logits"].float(), out["td_logits"].float()
        probs = F.softmax(logits.detach(), dim=1)
        target = td.targets(lo, probs) if bookkeeping else probs
        total, _, _ = tidal_loss(logits, td_logits, y, target, 1.0)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if bookkeeping:
            td.record(lo, probs, y, valid)

    def timed(fn, i):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(i)
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for i in range(2):  # warm-up both paths
        plain_step(i)
        tidal_step(i)
    plain, tidal, module_only = [], [], []
    for i in range(steps):
        plain.append(timed(plain_step, i))
        tidal.append(timed(tidal_step, i))
        module_only.append(timed(lambda j: tidal_step(j, bookkeeping=False), i))
    p, t, m = (statistics.median(v) for v in (plain, tidal, module_only))
    # module_only: the TD module and the KL term without the TD buffers, i.e. the method's own
    # compute; tidal - module_only is what tidal_dist's bookkeeping adds.
    return {"backbone": backbone, "device": device, "batch": batch, "input": f"{channels}x{size}x{size}",
            "plain_step_s": p, "tidal_step_s": t, "module_only_step_s": m, "ratio": t / p,
            "module_only_ratio": m / p, "plain_img_s": batch / p, "tidal_img_s": batch / t}


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per variant (default: 40 for small_cnn, 8 for ResNets)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--backbones", default="small_cnn,resnet18_cifar")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, results = [], []
    for backbone in args.backbones.split(","):
        size, channels = (32, 3) if device == "cuda" else (28, 1)
        steps = args.steps or (40 if backbone == "small_cnn" or device == "cuda" else 8)
        r = bench(backbone, args.batch, steps, size, channels, device)
        results.append(r)
        rows.append([backbone, device, r["input"], r["batch"], f"{r['plain_step_s']*1000:.1f}",
                     f"{r['tidal_step_s']*1000:.1f}", f"{r['ratio']:.3f}",
                     f"{r['module_only_ratio']:.3f}"])
    target = 1.03 if device == "cuda" else 1.05
    result = {"target_ratio_max": target, "results": results}
    write(f"train_step_{device}", result,
          ["backbone", "device", "input", "batch", "plain ms/step", "tidal ms/step", "tidal/plain",
           "TD module only/plain"], rows, out=out)
    return result


if __name__ == "__main__":
    main()
