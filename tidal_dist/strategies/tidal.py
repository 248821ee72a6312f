"""TiDAL's two scores on the module's predicted training dynamics p̃ = softmax(m(x)).

Kye et al., "TiDAL: Learning Training Dynamics for Active Learning", ICCV 2023, sec. 3.3. Both train
with the TiDAL objective under train.objective=auto.
"""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, entropy_of, register


@register
class TiDALEntropy(Strategy):
    """TiDAL-H: entropy of the predicted TD; higher = more uncertain."""

    name = "tidal_entropy"
    objective = "tidal"
    needs = frozenset({"td_logits"})
    cheap = True

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return entropy_of(out.td_logits)


def tidal_margin(logits: torch.Tensor, td_logits: torch.Tensor) -> torch.Tensor:
    """M = p̃(ŷ) − max_{y≠ŷ} p̃(y), with ŷ the CLASSIFIER's argmax (not the module's): the
    reference code's definition. Can be negative when the module disagrees with the classifier."""
    p = torch.softmax(td_logits.double(), dim=1)
    y_hat = logits.argmax(dim=1)
    p_hat = p.gather(1, y_hat[:, None]).squeeze(1)
    others = p.scatter(1, y_hat[:, None], float("-inf"))
    return p_hat - others.max(dim=1).values


@register
class TiDALMargin(Strategy):
    """TiDAL-M: lower margin = more uncertain, so uncertainty = -margin."""

    name = "tidal_margin"
    objective = "tidal"
    needs = frozenset({"logits", "td_logits"})
    cheap = True
    reported_as = "margin"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return -tidal_margin(out.logits, out.td_logits)

    def reported(self, uncertainty: torch.Tensor) -> torch.Tensor:
        return -uncertainty
