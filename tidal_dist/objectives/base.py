"""The interface every training objective implements, the registry, and the loss terms they share.

An objective says which heads sit next to the classifier (`heads`), which of them see the stage
features cut from the backbone's graph in a given epoch (`detach`), and how a batch's outputs
become the loss (`loss`). Adding one = one file here that calls `register`.

Loss normalisation: every term is a sum over the valid rows of this rank divided by `rows`, the
number of valid rows in the whole global batch over the world size. DDP averages gradients over
ranks, so the gradient is the mean over the global batch's valid rows, whatever the world size,
including the last, partly padded batch of an epoch (a per-rank mean would weight a rank with one
valid row like a rank with 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tidal_dist.config import TrainConfig
from tidal_dist.models.network import Heads

_REGISTRY: dict[str, "Objective"] = {}


@dataclass
class StepBatch:
    labels: Tensor  # int64 [B]; padding rows may hold any label
    valid: Tensor  # bool [B]: False for sampler padding
    td_target: Tensor | None  # [B, C] TD target including this visit; None without a TD module
    rows: float  # loss denominator: valid rows of the global batch / world size (>= 1 / W)


class Objective:
    """Subclasses set `name` and implement `heads`, `detach` and `loss`."""

    name: str = ""

    def heads(self, cfg: TrainConfig) -> Heads:
        raise NotImplementedError

    def part_names(self, cfg: TrainConfig) -> tuple[str, ...]:
        """The names `loss` returns its terms under, in a fixed order (logged per epoch)."""
        heads = self.heads(cfg)
        return ("ce",) + (("lloss",) if heads.loss else ()) + (("kl",) if heads.td else ())

    def validate(self, cfg: TrainConfig, world_size: int) -> None:
        """UserError, before any training, for settings this objective cannot train with."""

    def detach(self, epoch: int, cfg: TrainConfig) -> dict[str, bool]:
        """Keyword arguments for Network.forward: which heads see detached stage features."""
        return {"detach_td": True, "detach_loss": True}

    def loss(self, out: dict[str, Tensor], batch: StepBatch, cfg: TrainConfig,
             epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        """(total, {part name: unweighted term}); every term is a sum over valid rows / batch.rows
        (ranking losses: a mean over pairs); total is their weighted sum."""
        raise NotImplementedError


def register(cls: type[Objective]) -> type[Objective]:
    _REGISTRY[cls.name] = cls()
    return cls


def registry() -> dict[str, Objective]:
    return dict(_REGISTRY)


def masked_sum(values: Tensor, valid: Tensor) -> Tensor:
    """Σ over valid rows, without boolean indexing (no host sync); NaN in invalid rows is ignored."""
    return torch.where(valid, values, torch.zeros_like(values)).sum()


def cross_entropy_rows(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Per-row CE in fp32; padding rows get label 0 first (a -1 would be an index error)."""
    labels = torch.where(valid, labels, torch.zeros_like(labels))
    return F.cross_entropy(logits.float(), labels, reduction="none")


def td_kl_rows(td_logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per-row KL(target || softmax(td_logits)), fp32. The target is detached; invalid rows are
    zeroed first, because a NaN target leaks NaN into the gradient even behind torch.where."""
    target = torch.where(valid[:, None], target.detach().float(), torch.zeros_like(target, dtype=torch.float32))
    # kl_div(input=log q, target=p) = p * (log p - log q): KL(p || q), 0 where p == 0.
    return F.kl_div(F.log_softmax(td_logits.float(), dim=1), target, reduction="none").sum(dim=1)


def module_kl(out: dict[str, Tensor], batch: StepBatch) -> Tensor | None:
    """The TD module's KL term when the net has one (None otherwise). Whether it reaches the
    backbone is decided by `detach`, not here."""
    if "td_logits" not in out:
        return None
    return masked_sum(td_kl_rows(out["td_logits"], batch.td_target, batch.valid), batch.valid) / batch.rows
