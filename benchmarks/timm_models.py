"""timm backbones: TD overhead (TiDAL step / CE step) and the frozen-feature path's speed-up.

    python benchmarks/timm_models.py [--models resnet50,vit_small_patch16_224] [--size 224]
                                     [--batch 16] [--steps 4] [--n 32] [--epochs 10]

TD overhead: benchmarks/train_step.py's measurement (interleaved steps, medians) on
timm:NAME backbones. Target <= 1.05 on the CPU.

Frozen-feature path (train.freeze=backbone, training/frozen_features.py) against the image path
with the same frozen backbone, for the first model, over one cycle of --epochs epochs on --n
labeled images:

    image path    per epoch: every batch through the frozen backbone (eval mode, no gradient
                  reaches it) and the classifier + TD head trained on its outputs
    frozen path   once: the backbone's pooled outputs of the n images (pooled_outputs, the pass
                  FeatureBatches makes); per epoch: the classifier + TD head on those rows

The cycle's ratio = epochs x image epoch / (one pass + epochs x feature epoch), each a median of
measured epochs (--image-epochs of the image path, all --epochs of the feature path). Decoding
is left out of both (random tensors): the real image path also decodes and augments every
epoch, so its ratio is, if anything, larger. Target (issue) >= 10x at 10 epochs; the one-time
pass costs about one image epoch, so the ratio stays below the number of epochs (see the md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write  # noqa: E402
from benchmarks.train_step import bench  # noqa: E402
from tidal_dist.config import ModelConfig  # noqa: E402
from tidal_dist.models import build_model  # noqa: E402
from tidal_dist.models.network import BackboneOutputs, pooled_outputs  # noqa: E402
from tidal_dist.objectives.tidal import tidal_loss  # noqa: E402


def frozen_path(name: str, n: int, batch: int, size: int, epochs: int, image_epochs: int) -> dict:
    torch.manual_seed(0)
    classes = 10
    model = build_model(ModelConfig(backbone=f"timm:{name}", td_hidden=128), classes, 3)
    model.freeze_backbone()
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9)
    images = torch.randn(n, 3, size, size)
    labels = torch.randint(0, classes, (n,))

    def step(x, y):
        out = model(x)
        probs = F.softmax(out["logits"].detach(), dim=1)
        total, _, _ = tidal_loss(out["logits"], out["td_logits"], y, probs, 1.0)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def image_epoch():
        t0 = time.perf_counter()
        for lo in range(0, n, batch):
            step(images[lo:lo + batch], labels[lo:lo + batch])
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.inference_mode():
        backbone = model.backbone
        parts = [pooled_outputs(backbone, images[lo:lo + batch]) for lo in range(0, n, batch)]
    rows = BackboneOutputs(torch.cat([p.embedding for p in parts]),
                           [torch.cat([p.stages[k] for p in parts]) for k in range(4)])
    feature_pass = time.perf_counter() - t0

    def feature_epoch():
        t0 = time.perf_counter()
        for lo in range(0, n, batch):
            x = BackboneOutputs(rows.embedding[lo:lo + batch],
                                [f[lo:lo + batch] for f in rows.stages])
            step(x, labels[lo:lo + batch])
        return time.perf_counter() - t0

    feature_epoch()  # warm-up
    image_s = statistics.median(image_epoch() for _ in range(image_epochs))
    feature_s = statistics.median(feature_epoch() for _ in range(epochs))
    cycle_image = epochs * image_s
    cycle_frozen = feature_pass + epochs * feature_s
    return {"model": name, "n": n, "batch": batch, "input": f"3x{size}x{size}", "epochs": epochs,
            "image_epoch_s": image_s, "feature_pass_s": feature_pass,
            "feature_epoch_s": feature_s, "epoch_ratio": image_s / feature_s,
            "cycle_ratio": cycle_image / cycle_frozen,
            "ceiling": epochs * image_s / feature_pass}


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,vit_small_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (TD overhead)")
    ap.add_argument("--n", type=int, default=32, help="labeled images (frozen path)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--image-epochs", type=int, default=3)
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    out = out if out is not None else args.out
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = args.models.split(",")
    overhead = [bench(f"timm:{m}", args.batch, args.steps, args.size, 3, device) for m in models]
    frozen = frozen_path(models[0], args.n, args.batch, args.size, args.epochs, args.image_epochs)
    rows = [[f"TD overhead, timm:{r['backbone'][5:]}", r["input"], r["batch"],
             f"{r['plain_step_s'] * 1000:.0f} ms CE, {r['tidal_step_s'] * 1000:.0f} ms TiDAL",
             f"{r['ratio']:.3f}", "<= 1.05"] for r in overhead]
    f = frozen
    rows.append([f"frozen path vs image path, timm:{f['model']}, {f['epochs']} epochs",
                 f["input"], f["batch"],
                 f"image epoch {f['image_epoch_s']:.2f} s; one pass {f['feature_pass_s']:.2f} s "
                 f"+ feature epoch {f['feature_epoch_s'] * 1000:.1f} ms "
                 f"(per epoch {f['epoch_ratio']:.0f}x)", f"{f['cycle_ratio']:.2f}x", ">= 10x"])
    result = {"target_td_ratio_max": 1.05, "target_frozen_cycle_ratio_min": 10.0,
              "device": device, "td_overhead": overhead, "frozen_path": frozen}
    write(f"timm_models_{device}", result,
          ["figure", "input", "batch", "measured", "ratio", "target"], rows, out=out)
    return result


if __name__ == "__main__":
    main()
