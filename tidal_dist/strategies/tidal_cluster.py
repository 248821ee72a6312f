"""TiDAL-H made batch-diverse for large budgets (beyond the TiDAL paper). Plain top-k picks
near-duplicates when a cycle queries thousands of samples; following Cluster-Margin (Citovsky et
al., "Batch Active Learning at Scale", NeurIPS 2021), which did this for margin:

  1. take the al.cluster_factor x k candidates with the highest TiDAL-H (entropy of the predicted
     training dynamics),
  2. cluster their penultimate embeddings into k groups (k-means, k-means++ seeded, on the GPU when
     there is one),
  3. pick the most uncertain member of each group; if some groups are empty, go round-robin over
     the groups, smallest first (Cluster-Margin's order), taking each one's next most uncertain.

Trains with the TiDAL objective under train.objective=auto; reports TiDAL-H."""

from __future__ import annotations

import numpy as np
import torch

from tidal_dist.selection import kmeans, top_k
from tidal_dist.strategies.base import (Outputs, ScoreContext, Selection, SelectionInputs, Strategy,
                                        entropy_of, register)


def round_robin(groups: np.ndarray, k: int) -> np.ndarray:
    """Positions of k picks among candidates listed best first, groups[i] being the i-th one's
    group: round r takes the r-th best of every group, smaller groups first. Best first."""
    sizes = np.bincount(groups)
    by_group = np.argsort(groups, kind="stable")  # best first within each group
    rank_in_group = np.empty(len(groups), dtype=np.int64)
    rank_in_group[by_group] = np.arange(len(groups)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    key = np.lexsort((groups, sizes[groups], rank_in_group))
    return np.sort(key[:k])


@register
class TiDALCluster(Strategy):
    name = "tidal_cluster"
    objective = "tidal"
    needs = frozenset({"td_logits", "embedding"})
    keeps = frozenset({"embedding"})

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return entropy_of(out.td_logits).cpu()

    def select(self, inputs: SelectionInputs) -> Selection:
        k = inputs.k
        shortlist = top_k(inputs.ids, inputs.uncertainty, inputs.al.cluster_factor * k)  # best first
        embedding = torch.from_numpy(np.asarray(inputs.kept["embedding"])[np.sort(shortlist)])
        groups_sorted, _ = kmeans(embedding.to(inputs.device), k, inputs.seed)
        # groups of the shortlist in its best-first order
        position = np.searchsorted(np.sort(shortlist), shortlist)
        groups = groups_sorted.cpu().numpy()[position]
        picks = shortlist[round_robin(groups, k)]
        return Selection(picks, inputs.uncertainty[picks])
