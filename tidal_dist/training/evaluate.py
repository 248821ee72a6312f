"""Top-1 accuracy on the whole test split, sharded across ranks exactly once.

Each rank counts on its own share (inference.predict, no collective in the loop); one all-reduce
of (correct, seen) at the end. If the ranks together saw a different number of samples than the
split holds, that is an error, not an accuracy. Counts are kept per class (one [2, C] tensor,
the same single all-reduce), so the per-class accuracy comes with the top-1: an imbalanced
protocol's report needs its mean (balanced accuracy) and its tail classes.
"""

from __future__ import annotations

import numpy as np
import torch

from tidal_dist.job import preemption
from tidal_dist.training.inference import predict


def evaluate(session, split: str = "test", ids: np.ndarray | None = None) -> dict:
    """Top-1 accuracy on `split` (or on `ids` of it: the validation hold-out of the pool).
    An empty split (a dataset without a labeled evaluation split) has no accuracy: None."""
    acc = session.accelerator
    if ids is None and session.manifest.split(split).num_samples == 0:
        return {"accuracy": None, "correct": 0, "num_samples": 0}
    classes = session.manifest.num_classes
    counts = torch.zeros(2, classes, dtype=torch.int64, device=acc.device)  # correct, seen
    for _ids, y, out in predict(session, split, session.cfg.train.eval_batch_size, ids=ids):
        y = y.to(acc.device)
        hit = (out["logits"].argmax(dim=1) == y).long()
        counts[0].index_add_(0, y, hit)
        counts[1].index_add_(0, y, torch.ones_like(hit))
    # A stop request ends the loop early on the rank that got it: agree before counting.
    preemption.raise_if_agreed(acc.device, f"evaluation on the {split} split")
    counts = acc.reduce(counts, reduction="sum")
    per_correct, per_seen = counts[0].tolist(), counts[1].tolist()
    correct, seen = sum(per_correct), sum(per_seen)
    expected = session.manifest.split(split).num_samples if ids is None else len(ids)
    if seen != expected:
        raise RuntimeError(f"evaluation saw {seen} samples of the {split} split, where "
                           f"{expected} were expected: the sharding lost or repeated samples")
    return {"accuracy": correct / expected, "correct": correct, "num_samples": seen,
            "per_class_correct": per_correct, "per_class_seen": per_seen}
