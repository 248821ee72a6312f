"""Top-k: the k highest scores, ties broken by the lower id, in O(N) for small k."""

from __future__ import annotations

import numpy as np


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices into `ids` of the k most uncertain, ordered by (score desc, id asc).

    The result depends only on the (id, score) pairs, never on their order in the arrays, so it
    is the same for any world size. NaN scores are an error (a broken model, not a choice).
    """
    n = len(scores)
    if k <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if np.isnan(scores).any():
        bad = ids[np.isnan(scores)][:10].tolist()
        raise ValueError(f"NaN scores for ids {bad}")
    k = min(k, n)
    # The k-th largest score is the threshold: everything above it is in, and the remaining
    # places go to the lowest ids among those equal to it.
    threshold = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > threshold)
    tied = np.flatnonzero(scores == threshold)
    tied = tied[np.argsort(ids[tied], kind="stable")[: k - len(above)]]
    chosen = np.concatenate([above, tied])
    order = np.lexsort((ids[chosen], -scores[chosen]))
    return chosen[order]
