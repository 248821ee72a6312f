"""Classifier margin: p(top-1) - p(top-2) of the classifier's softmax, smallest first (Scheffer,
Decomain & Wrobel, "Active Hidden Markov Models for Information Extraction", IDA 2001; Settles 2009,
sec. 3.1). uncertainty = -margin; the queries file reports the margin itself."""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register, top_two


@register
class ClassifierMargin(Strategy):
    name = "margin"
    cheap = True
    reported_as = "margin"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        first, second = top_two(torch.softmax(out.logits.double(), dim=1))
        return -(first - second)

    def reported(self, uncertainty: torch.Tensor) -> torch.Tensor:
        return -uncertainty
