"""Generate an ImageNet-layout folder of JPEGs: ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG.

    python benchmarks/make_image_folder.py --out /work/scratch/in1k_small --classes 1000 \
        --train-per-class 110 --val-per-class 10 --size 48x40

Each class has a smooth colour prototype (a few sinusoids); every image is its class prototype
plus per-image smooth noise, with a per-image size jitter (+-12.5%) so the variable-size path
(resize / crop) is exercised. Deterministic for a given seed; files that already exist are kept,
so an interrupted run continues where it stopped. Then:

    python -m tidal_dist prepare --source imagefolder:ROOT --out SHARDS
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(rng: np.random.Generator, proto: np.ndarray, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    f, phase, amp = proto[:, 0:2], proto[:, 2], proto[:, 3]
    jitter = rng.normal(0, 0.3, size=(3, 2)).astype(np.float32)
    out = np.empty((h, w, 3), dtype=np.float32)
    for k in range(3):
        fy, fx = f[k] + jitter[k]
        out[..., k] = 128 + amp[k] * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase[k])
    out += rng.normal(0, 12, size=(h, w, 3)).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def generate(root: Path, classes: int, per_split: dict[str, int], size: tuple[int, int],
             seed: int = 0, quality: int = 90, log_every: int = 10_000) -> int:
    protos = np.random.default_rng(seed).uniform(
        [0.5, 0.5, 0.0, 40.0], [4.0, 4.0, 6.28, 110.0], size=(classes, 3, 4)).astype(np.float32)
    written, t0 = 0, time.time()
    for split, n in per_split.items():
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"{split}_{c:04d}_{i:05d}.JPEG"
                if path.exists():
                    continue
                rng = np.random.default_rng([seed, c, i, 0 if split == "train" else 1])
                h = int(size[0] * rng.uniform(0.875, 1.125))
                w = int(size[1] * rng.uniform(0.875, 1.125))
                tmp = path.with_suffix(".tmp")
                Image.fromarray(class_image(rng, protos[c], h, w)).save(tmp, format="JPEG",
                                                                        quality=quality)
                tmp.rename(path)  # a file that exists is complete
                written += 1
                if log_every and written % log_every == 0:
                    print(f"{written:,} images written, {time.time() - t0:.0f} s", flush=True)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train-per-class", type=int, default=110)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--size", default="48x40", help="HxW before the per-image jitter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    h, w = map(int, args.size.split("x"))
    t0 = time.time()
    n = generate(Path(args.out), args.classes, {"train": args.train_per_class,
                                                "val": args.val_per_class}, (h, w), args.seed,
                 args.quality)
    print(f"{n:,} images written to {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
