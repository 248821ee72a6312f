"""dynamicAL (Wang et al., "Deep Active Learning by Leveraging Training Dynamics", NeurIPS 2022):
query the samples that would speed up training the most.

The paper's training dynamics of a set S under gradient flow is the rate the training loss falls,
    ∂L(S)/∂t = -‖∇_θ L(S)‖²,
and it selects the batch Q of unlabeled samples that maximises this rate for S ∪ Q. Their labels
are unknown, so each candidate takes the current model's prediction as its pseudo-label
ŷ = argmax_c p_c(x). Dropping the cross terms between samples (the paper's relaxation, which
makes the greedy batch the top-k of a per-sample score) leaves, per candidate,
    G(x) = ‖∇_θ ℓ_CE(f(x; θ), ŷ)‖²,
picked largest first.

Simplification, and why: θ is restricted to the classifier's last layer (weights W and bias b),
as BADGE's gradient embedding is. The whole network would need one backward per candidate, which
a streamed score cannot afford; the last layer gives the closed form
    ∇_W ℓ = (p - e_ŷ) hᵀ,  ∇_b ℓ = p - e_ŷ   =>   G(x) = ‖p - e_ŷ‖² (‖h‖² + 1)
with h the pooled penultimate embedding (the + 1 only when the classifier has a bias). Trained
with cross-entropy alone under train.objective=auto, as the paper's model is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register


def last_layer_grad_norm_sq(logits: torch.Tensor, embedding: torch.Tensor,
                            has_bias: bool = True) -> torch.Tensor:
    """‖∇_{W,b} CE(W h + b, argmax)‖² per row (float64): ‖p - e_ŷ‖² (‖h‖² + has_bias)."""
    p = torch.softmax(logits.double(), dim=1)
    residual = p - F.one_hot(p.argmax(dim=1), p.shape[1]).double()
    return (residual ** 2).sum(dim=1) * ((embedding.double() ** 2).sum(dim=1) + float(has_bias))


@register
class DynamicAL(Strategy):
    name = "dynamical"
    needs = frozenset({"logits", "embedding"})
    reported_as = "grad_norm_sq"

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        bias = getattr(out.classifier, "bias", None) is not None if out.classifier is not None \
            else True
        return last_layer_grad_norm_sq(out.logits, out.embedding, bias)
