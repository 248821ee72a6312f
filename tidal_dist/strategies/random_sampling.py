"""Random sampling as a score: a seeded hash of (id, cycle seed), so the pick is the same for any
world size, loader layout or batch order (a per-process RNG would not be). Trained with
cross-entropy alone, as the TiDAL reference code's Random baseline."""

from __future__ import annotations

import torch

from tidal_dist.strategies.base import Outputs, ScoreContext, Strategy, register
from tidal_dist.strategies.hashrng import uniform_hash


@register
class RandomSampling(Strategy):
    name = "random"
    needs = frozenset()

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        return torch.from_numpy(uniform_hash(out.ids.cpu().numpy(), ctx.cycle_seed))
