"""k-center greedy (Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach", ICLR 2018, Algorithm 1): repeatedly pick the candidate farthest from every centre so far,
starting from the labeled set as centres.

Memory: never an N x N (or N x L) matrix. The state is one vector of squared distances to the
nearest centre (O(N)); distances are computed in tiles of at most `tile` entries.

Time: O(N * (L + k) * D) like the textbook loop, but with the memory traffic of a matrix product.
The textbook loop updates the whole vector after every pick, a matrix-vector product that reads
all N x D embeddings k times (10,000 passes over 200 MB at N = 100,000, D = 512). Here picks are
applied to the vector in blocks of `block` centres (one matrix-matrix product per block). Between
two blocks the vector holds upper bounds; the next pick is the exact argmax, found among the
largest upper bounds refined against the pending centres: if the best refined distance exceeds
the largest bound left out, no other candidate can beat it (bounds only ever decrease).
Ties go to the lower index, so the result is a pure function of the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tidal_dist.selection.distances import Factors, nearest


def k_center_greedy(candidates: Tensor, centres: Tensor | None, k: int, block: int = 64,
                    tile: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """(indices of the k picks in pick order, squared distance of each pick to its nearest centre
    when picked). `candidates` [N, D] and `centres` [L, D] float32 on any device."""
    points = Factors([candidates])
    candidates = points.mats[0]
    n = len(points)
    k = min(k, n)
    # With no labeled centres every candidate is infinitely far: the lowest index goes first.
    none = torch.zeros(0, candidates.shape[1], device=candidates.device)
    bound = nearest(points, Factors([none if centres is None else centres.to(candidates.device)]),
                    tile)[0]
    norms = points.sq_norms()
    picked: list[int] = []
    reported: list[float] = []
    pending: list[int] = []
    for _ in range(k):
        best, value = _exact_argmax(candidates, norms, bound, pending)
        picked.append(best)
        reported.append(value)
        pending.append(best)
        bound[best] = -1.0  # a centre now: never picked again
        # Fold pending centres in after a block, or at once while bounds are still infinite
        # (no labeled centres): an infinite bound would make every refinement a full pass.
        if len(pending) == block or torch.isinf(bound).any():
            _apply(candidates, bound, pending, tile)
            pending = []
    return (torch.tensor(picked, dtype=torch.int64),
            torch.tensor(reported, dtype=torch.float64))


def _refine(candidates: Tensor, norms: Tensor, rows: Tensor, bound: Tensor,
            pending: list[int]) -> Tensor:
    """Exact squared distance to the nearest centre for `rows`, from their bound and the
    pending centres."""
    # index_select rather than tensor[index]: on the CPU the advanced-indexing gather of a few
    # hundred rows costs up to ~100x more, and this runs once per pick.
    exact = bound.index_select(0, rows)
    if pending:
        at = torch.tensor(pending, dtype=torch.int64, device=candidates.device)
        d2 = (norms.index_select(0, rows)[:, None] + norms.index_select(0, at)[None, :]
              - 2.0 * (candidates.index_select(0, rows) @ candidates.index_select(0, at).T))
        exact = torch.minimum(exact, d2.min(dim=1).values.clamp(min=0))
    return exact


def _exact_argmax(candidates: Tensor, norms: Tensor, bound: Tensor,
                  pending: list[int]) -> tuple[int, float]:
    n = bound.shape[0]
    m = min(n, max(256, 8 * len(pending)))
    while True:
        top = torch.topk(bound, m, sorted=True)
        exact = _refine(candidates, norms, top.indices, bound, pending)
        best_value = exact.max()
        # Every row left out has a bound <= the smallest bound taken; exact <= bound. So a best
        # refined value above that bound cannot be beaten (nor tied by a lower index) outside.
        if m == n or best_value > top.values[-1]:
            best = int(top.indices[exact == best_value].min())  # ties to the lower index
            return best, float(best_value)
        m = min(n, 4 * m)


def _apply(candidates: Tensor, bound: Tensor, pending: list[int], tile: int) -> None:
    """Fold a block of new centres into the bounds (one matrix product, tiled)."""
    done = bound < 0
    points = Factors([candidates])
    torch.minimum(bound, nearest(points, points.take(pending), tile)[0], out=bound)
    bound[done] = -1.0
