"""BADGE, Batch Active learning by Diverse Gradient Embeddings (Ash et al., "Deep Batch Active
Learning by Diverse, Uncertain Gradient Lower Bounds", ICLR 2020): k-means++ seeding over each
candidate's gradient embedding of the last layer under its own predicted label,

    g = (p - onehot(ŷ)) ⊗ h,      p = softmax(logits), ŷ = argmax p, h = penultimate embedding,

first centre the largest ||g|| (the authors' code). The N x (C·D) matrix of g is never built: the
squared distances factorise (selection/distances.py). Trained with cross-entropy alone under
train.objective=auto; the queries file reports each pick's D² when it was drawn."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tidal_dist.selection import Factors, kmeans_pp
from tidal_dist.strategies.base import (Outputs, ScoreContext, Selection, SelectionInputs, Strategy,
                                        register)


def gradient_factors(logits: torch.Tensor, embedding: torch.Tensor) -> Factors:
    probs = torch.softmax(logits.double(), dim=1)
    onehot = F.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
    return Factors([(probs - onehot).float(), embedding.float()])


@register
class BADGE(Strategy):
    name = "badge"
    needs = frozenset({"logits", "embedding"})
    keeps = frozenset({"logits", "embedding"})
    reported_as = "sq_distance"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return torch.zeros(len(out.ids), dtype=torch.float64)

    def select(self, inputs: SelectionInputs) -> Selection:
        picked, sq_distance = kmeans_pp(gradient_factors(inputs.tensor("logits"),
                                                         inputs.tensor("embedding")),
                                        inputs.k, inputs.seed,
                                        first="max_norm")
        return Selection(picked.numpy(), sq_distance.numpy())
