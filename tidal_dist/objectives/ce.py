"""Cross-entropy alone: how the TiDAL reference code trains Random, Entropy, BALD and Core-set.

With train.record_td (the default) the TD module is still trained, on stage features detached from
the backbone, so the training dynamics, data maps and the module analysis exist for baselines too,
while the backbone and classifier get exactly the CE gradient.
"""

from __future__ import annotations

from torch import Tensor

from tidal_dist.config import TrainConfig
from tidal_dist.models.network import Heads
from tidal_dist.objectives.base import (Objective, StepBatch, cross_entropy_rows, masked_sum,
                                        module_kl, register)


@register
class CrossEntropyObjective(Objective):
    name = "ce"

    def heads(self, cfg: TrainConfig) -> Heads:
        return Heads(td=cfg.record_td, loss=False)

    def loss(self, out: dict[str, Tensor], batch: StepBatch, cfg: TrainConfig,
             epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        ce = masked_sum(cross_entropy_rows(out["logits"], batch.labels, batch.valid),
                        batch.valid) / batch.rows
        kl = module_kl(out, batch)
        if kl is None:
            return ce, {"ce": ce}
        return ce + cfg.td_weight * kl, {"ce": ce, "kl": kl}
