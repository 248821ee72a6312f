"""Classifier entropy (the classic uncertainty baseline)."""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, Strategy, entropy_of, register


@register
class ClassifierEntropy(Strategy):
    name = "entropy"

    def uncertainty(self, out: Outputs, cycle_seed: int) -> torch.Tensor:
        return entropy_of(out.logits)
