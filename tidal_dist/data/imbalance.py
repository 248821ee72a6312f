"""Long-tailed pools, built like the TiDAL reference code (docs: tidal-method.md, "Imbalanced pools").

With a seeded RNG: reserve one random sample of every class (the caller puts them in the initial
labeled set, so every class is seen once); from the rest keep
    n_c = floor(n_max * (1 / IR) ** (c / (C - 1)))
random samples of class c, class 0 being the head and n_max its remaining count (4999 on CIFAR-10).
A class with fewer samples than n_c keeps all it has. The test split is not touched.
"""

from __future__ import annotations

import math

import numpy as np

from tidal_dist.job.errors import UserError


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """n_c for c = 0..C-1. The tiny epsilon keeps floor() from losing one to rounding when the
    product is an exact integer computed as e.g. 49.99999999."""
    if num_classes == 1:
        return [n_max]
    return [math.floor(n_max * (1.0 / ratio) ** (c / (num_classes - 1)) + 1e-9)
            for c in range(num_classes)]


def imbalanced_pool(labels_by_id: np.ndarray, ids: np.ndarray, num_classes: int, ratio: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool_ids, reserved_ids), both sorted; reserved = one id per class, not in pool_ids.

    labels_by_id[id] is the label of id (the pool split's labels array: its first id is 0).
    """
    if not ratio >= 1:
        raise UserError(f"imbalance ratio must be >= 1 (got {ratio})")
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    labels = np.asarray(labels_by_id)[ids]
    rng = np.random.default_rng(seed)

    reserved, remaining = [], []
    for c in range(num_classes):
        members = ids[labels == c]
        if len(members) == 0:
            raise UserError(f"imbalanced pool: class {c} has no sample among the {len(ids)} pool ids, "
                            f"so none can be reserved for the initial labeled set")
        pick = rng.integers(len(members))
        reserved.append(members[pick])
        remaining.append(np.delete(members, pick))

    counts = long_tail_counts(len(remaining[0]), num_classes, ratio)
    kept = [rng.choice(members, size=min(n, len(members)), replace=False)
            for members, n in zip(remaining, counts)]
    return np.sort(np.concatenate(kept)), np.sort(np.asarray(reserved, dtype=np.int64))
