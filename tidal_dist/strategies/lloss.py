"""Learning Loss (Yoo & Kweon, "Learning Loss for Active Learning", CVPR 2019): the loss prediction
head's output, highest first. Trains with the lloss objective (tidal_dist/objectives/lloss.py)
under train.objective=auto."""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register


@register
class LearningLoss(Strategy):
    name = "lloss"
    objective = "lloss"
    needs = frozenset({"loss_pred"})
    cheap = True
    reported_as = "predicted_loss"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return out.loss_pred.double().cpu()
