"""label_dispersion (Bengar, Raducanu, van de Weijer, "When Deep Learners Change Their Mind:
Learning Dynamics for Active Learning", CAIP 2021): how often the model changed its mind about a
candidate during training,

    dispersion(x) = 1 - f_x / T,   f_x = Σ_t [ŷ_t(x) = c*],   c* = argmax_c Σ_t [ŷ_t(x) = c],

over the T measurements ŷ_t = argmax softmax(f(x; θ_t)) taken during the cycle's training
(training/measure.py; the paper measures every epoch: al.td_measure_every=1). 0 = always the same
label, up to 1 - 1/C. Higher = more uncertain; ties (the score takes few values) go to the lower
id, as every top-k here. Trained with cross-entropy alone under train.objective=auto, as the
paper's model is.
"""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register


@register
class LabelDispersion(Strategy):
    name = "label_dispersion"
    needs = frozenset({"measured_td"})

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        votes = out.measured_votes.double()
        return 1.0 - votes.max(dim=1).values / out.measured_count.double().clamp(min=1)
