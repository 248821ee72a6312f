"""Top-1 accuracy on the whole test split, sharded across ranks exactly once.

Each rank streams its own contiguous share of the test ids (data.readers.StreamingDataset) through
the raw model, with no collective inside the loop (ranks may run different numbers of batches);
one all-reduce of (correct, seen) at the end. If the ranks together saw a different number of
samples than the split holds, that is an error, not an accuracy.
"""

from __future__ import annotations

import torch

from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.readers import StreamingDataset, stream_loader
from tidal_dist.data.transforms import build_transform


def evaluate(session, split: str = "test") -> dict:
    cfg, acc = session.cfg, session.accelerator
    manifest = load_manifest(cfg.data.root)
    transform = build_transform(cfg.data.eval_transform, manifest, train=False,
                                image_size=cfg.data.image_size)
    dataset = StreamingDataset(cfg.data.root, split, transform, rank=acc.process_index,
                               world_size=acc.num_processes, verify=cfg.data.verify_shards)
    loader = stream_loader(dataset, cfg.train.eval_batch_size, cfg.data.num_workers)
    # Unwrapped: DDP's forward may broadcast buffers, a collective that would deadlock when
    # ranks run different numbers of batches.
    model = acc.unwrap_model(session.model)
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.int64, device=acc.device)  # correct, seen
    with torch.inference_mode():
        for _ids, x, y in loader:
            with acc.autocast():
                logits, _ = model(session.to_device(x, model))
            y = y.to(acc.device)
            counts[0] += (logits.argmax(dim=1) == y).sum()
            counts[1] += y.numel()
    model.train(was_training)
    counts = acc.reduce(counts, reduction="sum")
    correct, seen = int(counts[0]), int(counts[1])
    expected = manifest.split(split).num_samples
    if seen != expected:
        raise RuntimeError(f"evaluation saw {seen} samples of the {split} split, which holds "
                           f"{expected}: the test sharding lost or repeated samples")
    return {"accuracy": correct / expected, "correct": correct, "num_samples": seen}
