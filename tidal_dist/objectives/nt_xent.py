"""SimCLR's contrastive loss, NT-Xent (normalized temperature-scaled cross entropy): Chen, Kornblith,
Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual Representations", ICML
2020, Eq. (1) and Algorithm 1. Used by `tidal-dist pretrain` (training/pretrain.py); no labels.

For a batch of N images seen as two augmented views, z_1..z_2N the projections (view a of image k
at row k, view b at row N + k), sim(u, v) = u.v / (|u| |v|) and temperature tau:

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )
    L       = 1 / (2N) * sum_{k=1..N} [ l(k, N + k) + l(N + k, k) ]

Each row's positive is its other view; the 2N - 2 other rows are its negatives. Computed as a
cross entropy over the rows of the 2N x 2N similarity matrix with its diagonal removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(view_a: Tensor, view_b: Tensor, temperature: float) -> Tensor:
    """The mean NT-Xent loss of N pairs: `view_a[k]` and `view_b[k]` ([N, D]) are the projections
    of the two views of image k."""
    if view_a.shape != view_b.shape or view_a.dim() != 2 or len(view_a) < 2:
        raise ValueError(f"nt_xent needs two [N, D] batches with N >= 2, got "
                         f"{tuple(view_a.shape)} and {tuple(view_b.shape)}")
    n = len(view_a)
    z = F.normalize(torch.cat([view_a, view_b]).float(), dim=1)
    logits = z @ z.T / temperature
    # k != i: a row's similarity with itself never enters the denominator
    logits.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)
