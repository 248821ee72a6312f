"""Top-1 accuracy on the whole test split, sharded across ranks exactly once.

Each rank counts on its own share (inference.predict, no collective in the loop); one all-reduce
of (correct, seen) at the end. If the ranks together saw a different number of samples than the
split holds, that is an error, not an accuracy.
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
    counts = torch.zeros(2, dtype=torch.int64, device=acc.device)  # correct, seen
    for _ids, y, out in predict(session, split, session.cfg.train.eval_batch_size, ids=ids):
        y = y.to(acc.device)
        counts[0] += (out["logits"].argmax(dim=1) == y).sum()
        counts[1] += y.numel()
    # A stop request ends the loop early on the rank that got it: agree before counting.
    preemption.raise_if_agreed(acc.device, f"evaluation on the {split} split")
    counts = acc.reduce(counts, reduction="sum")
    correct, seen = int(counts[0]), int(counts[1])
    expected = session.manifest.split(split).num_samples if ids is None else len(ids)
    if seen != expected:
        raise RuntimeError(f"evaluation saw {seen} samples of the {split} split, where "
                           f"{expected} were expected: the sharding lost or repeated samples")
    return {"accuracy": correct / expected, "correct": correct, "num_samples": seen}
