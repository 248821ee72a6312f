"""TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit
High and Low Budgets", ICML 2022): with few labels, query typical samples that cover the data.

    1. k-means on the embeddings into |L| + k clusters (the labeled points and the picks to come);
    2. clusters holding a labeled point (its nearest centroid) are covered; the others are taken
       largest first;
    3. from each, the most typical point: Typicality(x) = 1 / mean ||x - x_i|| over its K nearest
       neighbours x_i in the same cluster (the paper's K = 20, fewer in small clusters).

When there are fewer uncovered clusters than picks, the round goes over the clusters again
(largest first), taking each one's next most typical point. Distances inside a cluster are
computed in row blocks, never as an N x N matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tidal_dist.selection.distances import Factors, nearest
from tidal_dist.selection.kmeans import kmeans

NEIGHBOURS = 20  # the paper's K
ROW_BLOCK = 1024


def typicality(points: Tensor, neighbours: int = NEIGHBOURS) -> Tensor:
    """[n] typicality of each point within `points` (one cluster); 0 for a lone point."""
    n = len(points)
    k = min(neighbours, n - 1)
    if k <= 0:
        return torch.zeros(n, dtype=torch.float64)
    out = torch.empty(n, dtype=torch.float64)
    norms = (points * points).sum(dim=1)
    for lo in range(0, n, ROW_BLOCK):
        block = points[lo:lo + ROW_BLOCK]
        d2 = (norms[lo:lo + ROW_BLOCK, None] + norms[None, :] - 2.0 * block @ points.T).clamp_(min=0)
        # the point itself is at distance 0: take k + 1 smallest and drop the first column
        nearest_d = d2.topk(k + 1, dim=1, largest=False).values[:, 1:].sqrt()
        out[lo:lo + len(block)] = 1.0 / (nearest_d.double().mean(dim=1) + 1e-12)
    return out


def typiclust(points: Tensor, labeled: Tensor | None, k: int, seed: int,
              ) -> tuple[np.ndarray, np.ndarray]:
    """(row indices of k picks in pick order, the typicality of each pick)."""
    n = len(points)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    points = points.float().cpu()
    n_labeled = 0 if labeled is None else len(labeled)
    assignment, centroids = kmeans(points, min(n, n_labeled + k), seed)
    assignment = assignment.cpu()
    covered = set()
    if n_labeled:
        covered = set(nearest(Factors([labeled.float().cpu()]), Factors([centroids.cpu()]))[1]
                      .tolist())
    sizes = torch.bincount(assignment, minlength=len(centroids)).tolist()
    # largest first, ties to the lower cluster; covered clusters only after every uncovered one
    order = sorted((c for c in range(len(centroids)) if sizes[c]),
                   key=lambda c: (c in covered, -sizes[c], c))
    ranked: dict[int, list[tuple[int, float]]] = {}
    for c in order:
        members = torch.nonzero(assignment == c).flatten()
        t = typicality(points[members])
        by_typicality = sorted(zip(members.tolist(), t.tolist()), key=lambda m: (-m[1], m[0]))
        ranked[c] = by_typicality
    picks: list[int] = []
    values: list[float] = []
    depth = 0
    while len(picks) < k:
        for c in order:
            if depth < len(ranked[c]) and len(picks) < k:
                row, value = ranked[c][depth]
                picks.append(row)
                values.append(value)
        depth += 1
    return np.array(picks, dtype=np.int64), np.array(values, dtype=np.float64)
