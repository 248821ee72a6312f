"""TypiClust (Hacohen et al., ICML 2022, "Active Learning on a Budget"): typical samples of
k-means clusters of the embeddings, for low budgets; the algorithm is in selection/typiclust.py.
Used for cycle 0's initial set (`al.initial_strategy=typiclust`, on a pretrained backbone's
embeddings, before any training) and available as a cycle strategy (`al.strategy=typiclust`).
The queries file reports each pick's typicality."""

from __future__ import annotations

import torch

from tidal_dist.selection.typiclust import typiclust
from tidal_dist.strategies.base import (Outputs, ScoreContext, Selection, SelectionInputs, Strategy,
                                        register)


@register
class TypiClust(Strategy):
    name = "typiclust"
    needs = frozenset({"embedding"})
    keeps = frozenset({"embedding"})
    keeps_labeled = frozenset({"embedding"})
    reported_as = "typicality"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return torch.zeros(len(out.ids), dtype=torch.float64)

    def select(self, inputs: SelectionInputs) -> Selection:
        labeled = inputs.tensor("embedding", of_labeled=True) if inputs.labeled else None
        picked, typical = typiclust(inputs.tensor("embedding"), labeled, inputs.k, inputs.seed)
        return Selection(picked, typical)
