"""Classifier entropy, the classic uncertainty baseline: H(softmax(classifier logits)), highest first
(Shannon 1948; as an active-learning score: Settles, "Active Learning Literature Survey", 2009,
sec. 3.1). Trained with cross-entropy alone unless train.objective says otherwise (the TiDAL
paper's ablation trains it with the TiDAL objective)."""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, entropy_of, register


@register
class ClassifierEntropy(Strategy):
    name = "entropy"
    cheap = True

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return entropy_of(out.logits)
