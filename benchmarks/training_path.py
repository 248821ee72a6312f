"""The whole training path (shards -> decode -> augment -> TiDAL step + TD record) against an
in-memory tensor loop of the same model, batch and steps.

    python benchmarks/training_path.py [--n 4096] [--epochs 3] [--backbone small_cnn]

One process. The path is the real `train.train_cycle` on synthetic CIFAR-shaped shards (RGB
32x32, crop_flip), once on the device-resident path and once on the loader path; its epoch time
is the median of the epochs after the first (the device path's one-off decode is reported
apart, it is paid once per cycle). The baseline runs the same number of steps of the same TiDAL
step (forward, CE + KL against the softmax itself, backward, SGD) on tensors already on the
device, 3 timed repeats before the paths and 3 after, and takes their median. Both sides get
enough samples for a median to mean something: with two or three of them, this ratio moved
between 0.85 and 1.31 from one run to the next on a shared 2-core machine.
ratio = baseline time / path time: 1.0 means the data path costs nothing. Target >= 0.9.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import write  # noqa: E402


def in_memory_epoch_times(model, steps: int, batch: int, shape: tuple, device: torch.device,
                      num_classes: int, bf16: bool) -> list[float]:
    """Seconds of each of 3 timed repeats of `steps` TiDAL steps on pre-made device tensors."""
    from tidal_dist.objectives.tidal import tidal_loss

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, *shape, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    times = []
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                logits, td_logits = out["logits"], out["td_logits"]
            probs = F.softmax(logits.float().detach(), dim=1)
            total, _, _ = tidal_loss(logits, td_logits, y, probs, 1.0)
            total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:]


def _baseline(session, initial: dict, args) -> list[float]:
    model = copy.deepcopy(session.model)
    model.load_state_dict(initial)
    return in_memory_epoch_times(model, -(-args.n // args.batch), args.batch, (3, 32, 32),
                             session.device, 10, session.precision.bf16)


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096, help="labeled images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--workers", type=int, default=2, help="loader workers of the loader path")
    ap.add_argument("--paths", default="device,loader")
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)

    from tidal_dist.config import load_config
    from tidal_dist.data.manifest import load_labels
    from tidal_dist.data.shards import prepare
    from tidal_dist.training.session import build_session
    from tidal_dist.training.train import train_cycle

    work = Path(args.work or tempfile.mkdtemp(prefix="tidal_path_"))
    root = work / f"cifar_shaped_{args.n}"
    prepare(f"synthetic:{args.n + 64},10,32x32,3", root, shard_size=1000, progress=False)
    ids = np.arange(args.n, dtype=np.int64)
    labels = load_labels(root, "pool")[ids]
    results = {}
    session, baselines = None, []
    for path in args.paths.split(","):
        cfg = load_config(None, [
            f"data.root={root}", f"data.num_workers={args.workers}", "data.verify_shards=false",
            f"model.backbone={args.backbone}", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch}", "train.checkpoint_every=0",
            f"train.data_path={path}", f"run.dir={work / 'run'}", "run.log_every=1000000"])
        if session is None:
            session = build_session(cfg)
            initial = copy.deepcopy(session.model.state_dict())
            baselines += _baseline(session, initial, args)
        session.cfg = cfg
        session.model.load_state_dict(initial)
        t0 = time.perf_counter()
        result = train_cycle(session, ids, labels, work / f"cycle_{path}", cycle=0)
        total = time.perf_counter() - t0
        epoch_s = [e.seconds for e in result.epochs]
        timed = epoch_s[1:] if len(epoch_s) > 1 else epoch_s
        results[path] = {"epoch_s": statistics.median(timed), "epochs_s": epoch_s,
                         "cycle_s": total, "setup_s": total - sum(epoch_s)}
    baselines += _baseline(session, initial, args)
    baseline = statistics.median(baselines)
    rows = []
    for path, r in results.items():
        r["ratio"] = baseline / r["epoch_s"]
        r["img_s"] = args.n / r["epoch_s"]
        rows.append([path, f"{r['epoch_s']:.3f} s", f"{baseline:.3f} s", f"{r['ratio']:.3f}",
                     f"{r['img_s']:,.0f}", f"{r['setup_s']:.2f} s", ">= 0.9"])
    summary = {"n": args.n, "batch": args.batch, "backbone": args.backbone,
               "device": str(session.device), "loader_workers": args.workers,
               "in_memory_epoch_s": baseline, "in_memory_epochs_s": baselines,
               "in_memory_img_s": args.n / baseline,
               "paths": results, "target_ratio_min": 0.9}
    write("training_path", summary,
          ["path", "epoch (median)", "in-memory loop (median)", "ratio", "img/s",
           "once per cycle (decode, setup)", "target"], rows, out=out)
    return summary


if __name__ == "__main__":
    main()
