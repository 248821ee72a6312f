"""Learning Loss (Yoo & Kweon, "Learning Loss for Active Learning", CVPR 2019): a loss prediction
head next to the classifier, trained jointly with a pairwise ranking loss on the batch's true
per-sample CE, its stage features detached from the backbone after a fraction of the epochs
(train.lloss_detach_at; the reference's epoch 120 of 200 = 0.6).

Pairs are mirror pairs of the rank's batch: row i with row B-1-i (the reference code's
`input - input.flip(0)`), taken among the valid rows only, so a pair never includes sampler
padding. Two pair losses:
  bce     (the TiDAL reference code's baseline, the default): BCE(sigmoid(l̂_i - l̂_j), [l_i > l_j])
  margin  (the paper's eq. 2): max(0, -sign(l_i - l_j) · (l̂_i - l̂_j) + ξ), ξ = train.lloss_margin
averaged over the rank's pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tidal_dist.config import TrainConfig
from tidal_dist.job.errors import UserError
from tidal_dist.models.network import Heads
from tidal_dist.objectives.base import (Objective, StepBatch, cross_entropy_rows, masked_sum,
                                        module_kl, register)


def mirror_pairs(valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(first, second, ok): row indices of the mirror pairs among the valid rows, in batch order,
    and which of the B // 2 slots hold a pair. Device ops only (no host sync)."""
    b = valid.shape[0]
    order = torch.argsort((~valid).to(torch.int8), stable=True)  # valid rows first, in order
    v = valid.sum()
    a = torch.arange(b // 2, device=valid.device)
    mirror = v - 1 - a
    ok = a < mirror  # an odd count leaves its middle row unpaired
    return order[a], order[mirror.clamp(min=0)], ok


def ranking_loss(pred: Tensor, true_loss: Tensor, valid: Tensor, kind: str = "bce",
                 margin: float = 1.0) -> Tensor:
    """Mean pair loss over the mirror pairs of valid rows (0, still in the graph, if none)."""
    i, j, ok = mirror_pairs(valid)
    diff = pred[i] - pred[j]
    true_diff = (true_loss[i] - true_loss[j]).detach()
    if kind == "bce":
        per_pair = F.binary_cross_entropy_with_logits(diff, (true_diff > 0).to(diff.dtype),
                                                      reduction="none")
    elif kind == "margin":
        sign = torch.where(true_diff > 0, 1.0, -1.0).to(diff.dtype)
        per_pair = torch.clamp(margin - sign * diff, min=0)
    else:
        raise ValueError(f"unknown ranking loss '{kind}'")
    return masked_sum(per_pair, ok) / ok.sum().clamp(min=1)


def detach_epoch(cfg: TrainConfig) -> int:
    """First epoch whose loss-head features are detached (120 of 200 with the default 0.6)."""
    return round(cfg.lloss_detach_at * cfg.epochs)


@register
class LearningLossObjective(Objective):
    name = "lloss"

    def heads(self, cfg: TrainConfig) -> Heads:
        return Heads(td=cfg.record_td, loss=True)

    def validate(self, cfg: TrainConfig, world_size: int) -> None:
        per_rank = -(-cfg.batch_size // world_size)  # runtime.per_rank_batch
        if per_rank % 2:
            raise UserError(
                f"config key 'train.batch_size': train.objective=lloss pairs each rank's batch "
                f"with its mirror image, so the per-rank batch must be even; "
                f"train.batch_size={cfg.batch_size} over {world_size} process(es) gives {per_rank}: "
                f"use e.g. train.batch_size={(per_rank + 1) * world_size}")

    def detach(self, epoch: int, cfg: TrainConfig) -> dict[str, bool]:
        return {"detach_td": True, "detach_loss": epoch >= detach_epoch(cfg)}

    def loss(self, out: dict[str, Tensor], batch: StepBatch, cfg: TrainConfig,
             epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        ce_rows = cross_entropy_rows(out["logits"], batch.labels, batch.valid)
        parts = {"ce": masked_sum(ce_rows, batch.valid) / batch.rows,
                 "lloss": ranking_loss(out["loss_pred"].float(), ce_rows, batch.valid,
                                       cfg.lloss_loss, cfg.lloss_margin)}
        total = parts["ce"] + cfg.lloss_weight * parts["lloss"]
        kl = module_kl(out, batch)
        if kl is not None:
            parts["kl"] = kl
            total = total + cfg.td_weight * kl
        return total, parts
