"""TiDAL's objective: L = CE(logits, y) + λ · KL(p̄ ‖ p̃), with the TD module reading the stage
features NOT detached, so the KL term trains the backbone too (Kye et al., "TiDAL: Learning Training
Dynamics for Active Learning", ICCV 2023, eq. 4; tidal-method.md "Loss")."""

from __future__ import annotations

import torch
from torch import Tensor

from tidal_dist.config import TrainConfig
from tidal_dist.job.errors import UserError
from tidal_dist.models.network import Heads
from tidal_dist.objectives.base import (Objective, StepBatch, cross_entropy_rows, masked_sum,
                                        register, td_kl_rows)


def tidal_loss(logits: Tensor, td_logits: Tensor, labels: Tensor, td_target: Tensor,
               td_weight: float = 1.0, valid: Tensor | None = None,
               rows: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(total, ce, kl) = (ce + td_weight * kl, CE, KL(td_target || softmax(td_logits))).

    Both terms are sums over the valid rows divided by `rows` (default: the number of valid rows,
    i.e. means; KL summed over classes, "batchmean"). With no valid row the result is 0 but still
    part of the graph, so every DDP rank runs the same backward.
    """
    if valid is None:
        valid = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    valid = valid.to(device=labels.device, dtype=torch.bool)
    # A clamped count instead of a Python branch: no host sync.
    denominator = valid.sum().clamp(min=1) if rows is None else rows
    ce = masked_sum(cross_entropy_rows(logits, labels, valid), valid) / denominator
    kl = masked_sum(td_kl_rows(td_logits, td_target, valid), valid) / denominator
    return ce + td_weight * kl, ce, kl


@register
class TiDALObjective(Objective):
    name = "tidal"

    def heads(self, cfg: TrainConfig) -> Heads:
        if not cfg.record_td:
            raise UserError("config key 'train.record_td': train.objective=tidal trains on the "
                            "recorded training dynamics; set train.record_td=true")
        return Heads(td=True, loss=False)

    def detach(self, epoch: int, cfg: TrainConfig) -> dict[str, bool]:
        return {"detach_td": False, "detach_loss": True}

    def loss(self, out: dict[str, Tensor], batch: StepBatch, cfg: TrainConfig,
             epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        total, ce, kl = tidal_loss(out["logits"], out["td_logits"], batch.labels, batch.td_target,
                                   cfg.td_weight, batch.valid, batch.rows)
        return total, {"ce": ce, "kl": kl}
