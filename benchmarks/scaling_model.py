"""The cost model behind docs/scaling.md: one active-learning cycle of the iNaturalist 2018 and
ImageNet protocols on 1, 8 and 64 GPUs, from the ImageNet-shaped run's measured per-sample
costs (benchmarks/results/imagenet_shaped.json) and the stated GPU assumptions below.

    python benchmarks/scaling_model.py     # prints the markdown tables of docs/scaling.md

The measured run gives the cost of a scored candidate and of an evaluated image relative to a
training visit, on the product's own pipeline with the same ResNet-50 (all phases at the same
resolution, so the ratios are model-compute ratios: forward vs forward + backward + TD module).
One GPU anchor turns them into seconds: ResNet-50 training at 224 px on an H100, bf16,
channels_last, about 2,500 img/s at a per-GPU batch of 128 (what an epoch of 100k images in about
5 s on 8 H100s implies). Everything else is an assumption written next to its number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

GPU = {
    "train_img_s": 2500.0,  # ResNet-50 224 px fwd+bwd+TD module, batch 128, one H100 (anchor)
    "min_step_s": 0.010,  # eager-mode floor of one ResNet-50 training step (kernel launches)
    "decode_img_s": 3000.0,  # JPEG decode + resize per GPU: nvJPEG, or ~16 CPU cores with PIL
    "grad_bytes": 25.6e6 * 4,  # ResNet-50 + TD module gradients, fp32
    "nvlink_Bps": 150e9,  # NCCL all-reduce / all-to-all bus bandwidth per GPU within a node
    "ib_Bps": 40e9,  # per GPU across nodes (one 400 Gb/s NDR HCA per GPU)
    "write_Bps": 1e9,  # rank 0 writing checkpoints to the shared filesystem
    "fs_read_Bps": 10e9,  # aggregate read bandwidth of the shared filesystem (JPEG shards)
    "jpeg_bytes": 110e3,  # an ImageNet / iNaturalist JPEG
}

PROTOCOLS = {
    "iNaturalist 2018": {"pool": 437_513, "test": 24_426, "classes": 8_142},
    "ImageNet-1k": {"pool": 1_281_167, "test": 50_000, "classes": 1_000},
}
SCHEDULE = {"labeled": 100_000, "epochs": 200, "batch": 128, "subset": 100_000,
            "checkpoint_every": 10}  # the last (largest) cycle of configs/inat2018.yaml


def measured() -> dict:
    return json.loads((RESULTS / "imagenet_shaped.json").read_text())


def cycle(protocol: dict, gpus: int, m: dict) -> dict:
    ps = m["per_sample_s"]
    score_rel = ps["score_s"] / ps["train_visit_s_epochs_only"]  # measured
    eval_rel = ps["eval_s"] / ps["train_visit_s_epochs_only"]  # measured
    n, epochs, batch = SCHEDULE["labeled"], SCHEDULE["epochs"], SCHEDULE["batch"]
    per_gpu_batch = math.ceil(batch / gpus)
    steps = math.ceil(n / batch)
    compute = max(per_gpu_batch / GPU["train_img_s"], GPU["min_step_s"])
    bw = GPU["nvlink_Bps"] if gpus <= 8 else GPU["ib_Bps"]
    allreduce = 0.0 if gpus == 1 else 2 * GPU["grad_bytes"] * (gpus - 1) / gpus / bw
    # DDP overlaps most of the all-reduce with the backward pass; count a third of it.
    train = epochs * steps * (compute + allreduce / 3)
    infer_img_s = min(GPU["train_img_s"] / score_rel, GPU["decode_img_s"])
    eval_img_s = min(GPU["train_img_s"] / eval_rel, GPU["decode_img_s"])
    evaluate = protocol["test"] / (gpus * eval_img_s)
    full = protocol["pool"] - n
    fs = GPU["fs_read_Bps"] / GPU["jpeg_bytes"]  # images/s the filesystem can serve in total
    score_full = full / min(gpus * infer_img_s, fs)
    score_subset = SCHEDULE["subset"] / min(gpus * infer_img_s, fs)
    row = 4 * protocol["classes"] + 32
    a2a = 0.0 if gpus == 1 else n * row / gpus * (gpus - 1) / gpus / bw
    local = 2 * n * row / gpus / 2e12  # device gather / copy of the rows, HBM
    gather_epoch = a2a + local
    td_bytes = n * row
    model_bytes = 2 * GPU["grad_bytes"]  # weights + momentum
    checkpoints = epochs // SCHEDULE["checkpoint_every"]
    ckpt = checkpoints * (td_bytes + model_bytes) / GPU["write_Bps"]
    commit = 2 * (td_bytes + GPU["grad_bytes"]) / GPU["write_Bps"]  # work/ then cycles/
    return {"gpus": gpus, "per_gpu_batch": per_gpu_batch, "train_s": train,
            "ideal_train_s": epochs * n / (gpus * GPU["train_img_s"]), "eval_s": evaluate,
            "score_full_s": score_full, "score_subset_s": score_subset, "full_candidates": full,
            "gather_epoch_s": gather_epoch, "gather_cycle_s": epochs * gather_epoch,
            "td_bytes": td_bytes, "checkpoint_s": ckpt, "commit_s": commit,
            "infer_img_s": infer_img_s, "score_rel": score_rel, "eval_rel": eval_rel}


def fmt(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1000:.1f} ms"


def tables() -> str:
    m = measured()
    out = []
    for name, protocol in PROTOCOLS.items():
        rows = [cycle(protocol, g, m) for g in (1, 8, 64)]
        out += [f"### {name}: the last cycle (100,000 labeled, {protocol['classes']:,} classes, "
                f"pool {protocol['pool']:,}, test {protocol['test']:,})", "",
                "| | 1 GPU | 8 GPUs | 64 GPUs |", "|---|---|---|---|"]

        def line(label, key, f=fmt):
            out.append(f"| {label} | " + " | ".join(f(r[key]) for r in rows) + " |")

        line("per-GPU batch (global 128)", "per_gpu_batch", str)
        line("training, 200 epochs", "train_s")
        line("(training if it scaled perfectly)", "ideal_train_s")
        line("evaluation", "eval_s")
        line(f"scoring, full pool ({rows[0]['full_candidates']:,})", "score_full_s")
        line("scoring, 100k subset", "score_subset_s")
        line("TD gather, per epoch", "gather_epoch_s")
        line("TD gather, per cycle", "gather_cycle_s")
        line("checkpoint I/O (20 checkpoints, rank 0)", "checkpoint_s")
        line("cycle commit (TD + model, twice)", "commit_s")
        total = [r["train_s"] + r["eval_s"] + r["score_full_s"] + r["gather_cycle_s"]
                 + r["checkpoint_s"] + r["commit_s"] for r in rows]
        out.append("| **one cycle, full-pool scoring** | " + " | ".join(f"**{fmt(t)}**" for t in total)
                   + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables())
