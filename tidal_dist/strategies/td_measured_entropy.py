"""td_measured_entropy: the entropy of a candidate's MEASURED training dynamics, the running mean
p̄(x) = (1/T) Σ_t softmax(f(x; θ_t)) over the T measurements taken during the cycle's training
(every al.td_measure_every epochs; training/measure.py).

TiDAL (Kye et al., ICCV 2023, sec. 3.3) scores the entropy of the same quantity as PREDICTED by its
TD module, because measuring it means evaluating every candidate during training; measuring it,
as Bengar et al. ("When Deep Learners Change Their Mind", 2021) do, is the baseline that tells
whether prediction loses anything. Higher entropy = more uncertain. Trained with cross-entropy
alone under train.objective=auto (set train.objective=tidal to compare under TiDAL's training).
"""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, entropy_of_probs, register


@register
class MeasuredTDEntropy(Strategy):
    name = "td_measured_entropy"
    needs = frozenset({"measured_td"})

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return entropy_of_probs(out.measured_mean)
