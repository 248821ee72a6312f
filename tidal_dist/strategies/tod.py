"""TOD, temporal output discrepancy (Huang et al., "Semi-Supervised Active Learning with Temporal
Output Discrepancy", ICCV 2021): query the samples whose output moved the most between two
moments of training.

The paper's discrepancy of a sample between the weights at step t and at step t + T is
    D_t^T(x) = ‖f(x; w_{t+T}) - f(x; w_t)‖₂,
which it shows bounds the sample's loss from above (so a large D marks a high-loss sample). For
active learning it uses the cyclic variant (COD): the two moments are the ends of two consecutive
cycles, the previous cycle's final model against the current one. That is the variant here: the
reference weights are the previous cycle's committed model (cycles/cycle_{k-1}/model.pt), and the
candidates are scored by
    D(x) = ‖softmax(f(x; w_k)) - softmax(f(x; w_{k-1}))‖₂, picked largest first.

Where this simplifies, and why:
- f is taken as the class probabilities (softmax of the logits), not raw logits: bounded by √2,
  so a cycle's scores do not grow with the logits' scale as training lengthens;
- cycle 0 has no previous cycle: its reference is an untrained copy of the network (parameters
  re-drawn by each layer's reset_parameters, seeded by the cycle: identical on every rank), i.e.
  the moment t = 0 of the paper's D_t^T;
- no semi-supervised consistency loss: the paper's TOD also trains with an unsupervised
  regulariser on the unlabeled pool; here the model trains with cross-entropy alone under
  train.objective=auto, like the other baselines, so only the selection rule is compared.
The reference forward runs in cycle/score.py beside the current one (same batch, eval mode).
"""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register


def output_discrepancy(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """‖softmax(logits) - softmax(reference_logits)‖₂ per row (float64)."""
    p = torch.softmax(logits.double(), dim=1)
    q = torch.softmax(reference_logits.double(), dim=1)
    return torch.linalg.vector_norm(p - q, dim=1)


@register
class TOD(Strategy):
    name = "tod"
    needs = frozenset({"logits", "reference_logits"})
    reported_as = "output_discrepancy"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return output_discrepancy(out.logits, out.reference_logits)
