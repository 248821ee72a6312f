"""Least confidence: 1 - max_y p(y) of the classifier's softmax, highest first (Lewis & Gale,
"A Sequential Algorithm for Training Text Classifiers", SIGIR 1994; Settles 2009, sec. 3.1)."""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register


@register
class LeastConfidence(Strategy):
    name = "least_confidence"
    cheap = True

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return 1.0 - torch.softmax(out.logits.double(), dim=1).max(dim=1).values
