"""BALD, Bayesian Active Learning by Disagreement with Monte-Carlo dropout (Houlsby et al., 2011;
Gal, Islam & Ghahramani, "Deep Bayesian Active Learning with Image Data", ICML 2017), in the TiDAL
reference code's variant: dropout p = al.mc_dropout (0.5) on the pooled penultimate features only,
used only at scoring (the network is in eval mode; training never drops), T = al.mc_passes (10):

    score = H(mean_t p_t) - mean_t H(p_t)        (mutual information; highest first)

Each pass re-applies only the classifier's last layer to the dropped embedding, so the backbone
runs once per batch. The dropout masks are counter-based hashes of (id, pass, cycle seed, unit):
the pick does not depend on the world size, batch order or loader layout. The passes are consumed
one at a time, so memory does not grow with T beyond one batch of probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from tidal_dist.strategies.hashrng import splitmix64, to_unit
from tidal_dist.strategies.base import (Outputs, ScoreContext, Strategy, entropy_of_probs,
                                        register)


def dropout_keep(ids: np.ndarray, mc_pass: int, seed: int, width: int, p: float) -> np.ndarray:
    """bool [B, width]: which embedding units survive pass `mc_pass` for each id."""
    stream = splitmix64(splitmix64(np.array([seed], dtype=np.int64)) + np.uint64(mc_pass))
    rows = splitmix64(np.asarray(ids).astype(np.uint64) ^ stream)
    with np.errstate(over="ignore"):
        units = rows[:, None] + np.arange(width, dtype=np.uint64)[None, :]
    return to_unit(splitmix64(units)) >= p


def mc_dropout_probs(classifier: Callable[[torch.Tensor], torch.Tensor], embedding: torch.Tensor,
                     ids: torch.Tensor, passes: int, p: float, seed: int) -> Iterator[torch.Tensor]:
    """Softmax (float64 [B, C]) of each dropout pass, one pass at a time."""
    ids_np = ids.cpu().numpy()
    for t in range(passes):
        keep = torch.from_numpy(dropout_keep(ids_np, t, seed, embedding.shape[1], p))
        dropped = embedding * keep.to(embedding.device, embedding.dtype) / (1.0 - p)
        yield torch.softmax(classifier(dropped).double(), dim=1)


@register
class BALD(Strategy):
    name = "bald"
    needs = frozenset({"embedding", "mc_probs"})

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        mean_p, mean_entropy = None, None
        for probs in mc_dropout_probs(out.classifier, out.embedding, out.ids, ctx.al.mc_passes,
                                      ctx.al.mc_dropout, ctx.cycle_seed):
            h = entropy_of_probs(probs)
            mean_p = probs if mean_p is None else mean_p + probs
            mean_entropy = h if mean_entropy is None else mean_entropy + h
        mean_p, mean_entropy = mean_p / ctx.al.mc_passes, mean_entropy / ctx.al.mc_passes
        return (entropy_of_probs(mean_p) - mean_entropy).cpu()
