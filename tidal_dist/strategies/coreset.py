"""Core-set (Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach", ICLR 2018): k-center greedy over the penultimate embeddings (eval mode), with the labeled
set as the initial centres and Euclidean distance, as the TiDAL reference code runs it. Trained with
cross-entropy alone under train.objective=auto. The queries file reports each pick's squared
distance to its nearest centre when it was picked."""

from __future__ import annotations

import torch

from tidal_dist.selection import k_center_greedy
from tidal_dist.strategies.base import (Outputs, ScoreContext, Selection, SelectionInputs, Strategy,
                                        register)


@register
class CoreSet(Strategy):
    name = "coreset"
    needs = frozenset({"embedding"})
    keeps = frozenset({"embedding"})
    keeps_labeled = frozenset({"embedding"})
    reported_as = "sq_distance"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return torch.zeros(len(out.ids), dtype=torch.float64)

    def select(self, inputs: SelectionInputs) -> Selection:
        picked, sq_distance = k_center_greedy(inputs.tensor("embedding"),
                                              inputs.tensor("embedding", of_labeled=True), inputs.k)
        return Selection(picked.numpy(), sq_distance.numpy())
