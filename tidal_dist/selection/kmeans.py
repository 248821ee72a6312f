"""k-means++ seeding (Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding",
SODA 2007) and Lloyd's k-means, over points given by factors (selection/distances.py), so BADGE's
gradient embeddings are never built.

Seeding draws each next centre with probability proportional to D², the squared distance to the
nearest centre so far. The textbook loop updates D² for every point after every draw (k passes
over N points). Here new centres are folded into D² in blocks (one matrix product per block);
between blocks D² holds upper bounds U ≥ D², and a draw is exact rejection sampling: propose i with
probability U_i / ΣU, accept with probability D²_i / U_i (D²_i refined against the pending
centres). Accepted draws are distributed exactly ∝ D². The generator is seeded by the caller, so
the picks are a pure function of (points, k, seed).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tidal_dist.selection.distances import Factors, nearest

__all__ = ["Factors", "kmeans", "kmeans_pp"]


def kmeans_pp(points: Factors, k: int, seed: int, first: str = "max_norm", block: int = 64,
              tile: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """(indices of k distinct centres in draw order, D² of each when drawn; the first's is its
    squared norm).

    first: "max_norm" (BADGE's choice: the largest gradient embedding) or "random" (uniform, the
    k-means++ paper's). When fewer than k points are at a positive distance from the centres,
    the rest are the lowest remaining indices (reported D² = 0).
    """
    n = len(points)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
    norms = points.sq_norms()
    if first == "max_norm":
        start = int(torch.nonzero(norms == norms.max())[0, 0])  # ties to the lower index
    elif first == "random":
        start = int(rng.integers(n))
    else:
        raise ValueError(f"unknown first-centre rule '{first}'")
    chosen, reported = [start], [float(norms[start])]  # no centre yet: its distance to 0
    is_chosen = np.zeros(n, dtype=bool)
    is_chosen[start] = True
    bound = _bounds(points, [start], None, tile, is_chosen)
    pending: list[int] = []
    cum = np.cumsum(bound)
    proposals = 0
    while len(chosen) < k:
        total = cum[-1]
        if not total > 0:  # every remaining point coincides with a centre
            rest = np.flatnonzero(~is_chosen)[: k - len(chosen)]
            chosen += rest.tolist()
            reported += [0.0] * len(rest)
            break
        i = min(int(np.searchsorted(cum, rng.random() * total, side="right")), n - 1)
        proposals += 1
        if is_chosen[i]:
            continue
        exact = _refine(points, norms, i, bound[i], pending)
        if rng.random() * bound[i] < exact:
            chosen.append(i)
            reported.append(exact)
            is_chosen[i] = True
            pending.append(i)
        # Fold the pending centres in after a block, or when the bounds have gone so loose that
        # most proposals are rejected.
        if len(pending) == block or (pending and proposals > 4 * block):
            bound = _bounds(points, pending, bound, tile, is_chosen)
            cum = np.cumsum(bound)
            pending, proposals = [], 0
    return torch.tensor(chosen, dtype=torch.int64), torch.tensor(reported, dtype=torch.float64)


def _bounds(points: Factors, new: list[int], old: np.ndarray | None, tile: int,
            is_chosen: np.ndarray) -> np.ndarray:
    d2 = nearest(points, points.take(new), tile)[0].double().cpu().numpy()
    if old is not None:
        d2 = np.minimum(d2, old)
    d2[is_chosen] = 0.0
    return d2


def _refine(points: Factors, norms: Tensor, i: int, bound: float, pending: list[int]) -> float:
    if not pending:
        return bound
    row = points.take([i])
    d2 = norms[i] + norms[pending] - 2.0 * row.inner(points.take(pending))[0]
    return min(bound, float(d2.clamp(min=0).min()))


def kmeans(points: Tensor, k: int, seed: int, iterations: int = 20,
           tile: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """(cluster of each point [N], centroids [k, D]): Lloyd's algorithm from a k-means++ seeding,
    until no assignment changes or `iterations` rounds. An empty cluster keeps its centroid."""
    points = points.float()
    factors = Factors([points])
    start, _ = kmeans_pp(factors, k, seed, first="random", tile=tile)
    centroids = points[start.to(points.device)].clone()
    assignment = None
    for _ in range(iterations):
        new = nearest(factors, Factors([centroids]), tile)[1]
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=len(centroids)).to(points.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return assignment, centroids
