"""Squared Euclidean distances between point sets without materialising them: tiled matrix
products, and points given by factors.

`Factors([A, H])` stands for the points g_i = a_i ⊗ h_i (outer products, flattened) without building
them: <g_i, g_j> = <a_i, a_j> · <h_i, h_j>, so ||g_i - g_j||² = ||g_i||² + ||g_j||² - 2 <g_i, g_j> costs
O(d_A + d_H) per pair instead of O(d_A · d_H). That is BADGE's gradient embedding (Ash et al.,
ICLR 2020): (p - onehot(ŷ)) ⊗ h, an N x (C·D) matrix never built. `Factors([X])` is plain points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Factors:
    mats: tuple[Tensor, ...]  # each [N, d_f], same N and device

    def __init__(self, mats) -> None:
        mats = tuple(m.float() for m in mats)
        if not mats or len({m.shape[0] for m in mats}) != 1:
            raise ValueError("Factors needs at least one matrix, all with the same number of rows")
        object.__setattr__(self, "mats", mats)

    def __len__(self) -> int:
        return self.mats[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.mats[0].device

    def take(self, index) -> "Factors":
        return Factors([m[index] for m in self.mats])

    def sq_norms(self) -> Tensor:
        out = torch.ones(len(self), dtype=torch.float32, device=self.device)
        for m in self.mats:
            out = out * (m * m).sum(dim=1)
        return out

    def inner(self, other: "Factors") -> Tensor:
        """[len(self), len(other)] inner products."""
        out = None
        for a, b in zip(self.mats, other.mats):
            g = a @ b.T
            out = g if out is None else out * g
        return out


def nearest(points: Factors, centres: Factors, tile: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """(min squared distance, index of the nearest centre) for every point, computed in tiles of at
    most `tile` distances; ties go to the lower centre index. No centres: (inf, -1)."""
    n, m = len(points), len(centres)
    best = torch.full((n,), float("inf"), dtype=torch.float32, device=points.device)
    arg = torch.full((n,), -1, dtype=torch.int64, device=points.device)
    if n == 0 or m == 0:
        return best, arg
    p_norm, c_norm = points.sq_norms(), centres.sq_norms()
    rows = max(1, min(n, tile // max(1, min(m, 8192))))
    cols = max(1, tile // rows)
    for i in range(0, n, rows):
        p = points.take(slice(i, i + rows))
        for j in range(0, m, cols):
            c = centres.take(slice(j, j + cols))
            d2 = (p_norm[i:i + rows, None] + c_norm[None, j:j + cols] - 2.0 * p.inner(c)).clamp_(min=0)
            value, index = d2.min(dim=1)  # first minimum: the lower index within the tile
            better = value < best[i:i + rows]  # strict: an earlier tile keeps its tie
            best[i:i + rows] = torch.where(better, value, best[i:i + rows])
            arg[i:i + rows] = torch.where(better, index + j, arg[i:i + rows])
    return best, arg
