"""td_measured_margin: the margin of a candidate's MEASURED training dynamics,
M = p̄(ŷ) - max_{y≠ŷ} p̄(y), ŷ = argmax p̄, with p̄ the running-mean softmax over the measurements
taken during training (training/measure.py). The measured counterpart of TiDAL-M (Kye et al., ICCV
2023, sec. 3.3), whose p̄ is the TD module's prediction; here ŷ is p̄'s own argmax, the plain
margin of a probability vector. Lower margin = more uncertain, so uncertainty = -M and the
queries file reports M. Trained with cross-entropy alone under train.objective=auto.
"""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register, top_two


@register
class MeasuredTDMargin(Strategy):
    name = "td_measured_margin"
    needs = frozenset({"measured_td"})
    reported_as = "margin"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        first, second = top_two(out.measured_mean.double())
        return -(first - second)

    def reported(self, uncertainty: torch.Tensor) -> torch.Tensor:
        return -uncertainty
