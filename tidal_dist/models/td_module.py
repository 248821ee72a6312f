"""The TD prediction module and the TiDAL training loss (tidal-method.md, "TD prediction module"
and "Loss"; Kye et al., ICCV 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TDModule(nn.Module):
    """Predicts a sample's training dynamics from the backbone's four stage feature maps.

    Per stage: global average pool -> Linear(C_k -> hidden) -> ReLU; the four vectors are
    concatenated and mapped to class logits m(x); the predicted TD is softmax(m(x)).
    The reference code also builds four BatchNorm1d layers it never uses; they are left out, so
    every parameter gets a gradient and DDP runs with find_unused_parameters=False.
    """

    def __init__(self, stage_channels: Sequence[int], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.stage_heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU())
            for channels in stage_channels
        )
        self.classifier = nn.Linear(hidden * len(stage_channels), num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.stage_heads):
            raise ValueError(f"TDModule expects {len(self.stage_heads)} feature maps, got {len(features)}")
        pooled = [head(f) for head, f in zip(self.stage_heads, features)]
        return self.classifier(torch.cat(pooled, dim=1))


def tidal_loss(logits: Tensor, td_logits: Tensor, labels: Tensor, td_target: Tensor,
               td_weight: float = 1.0, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """L = CE(logits, labels) + td_weight * KL(td_target || softmax(td_logits)).

    Both terms are means over the counted rows (KL: summed over classes, "batchmean"). `td_target`
    is the cumulative TD p̄ and is detached here. `valid` (bool, shape [B]) marks the rows that
    count, e.g. to drop sampler padding; invalid rows may hold any label or target. With no valid
    row the result is 0 but still part of the graph, so every DDP rank runs the same backward.

    Returns (total, ce, kl).
    """
    # fp32 for the log-probabilities: bf16 logits lose too much in log_softmax / KL.
    logits, td_logits = logits.float(), td_logits.float()
    td_target = td_target.detach().float()
    if valid is None:
        valid = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    valid = valid.to(device=labels.device, dtype=torch.bool)

    # Sanitise invalid rows first: a padding label of -1 would be an index error, a NaN target
    # would leak NaN into the sums (and into the gradient, even behind torch.where).
    labels = torch.where(valid, labels, torch.zeros_like(labels))
    td_target = torch.where(valid[:, None], td_target, torch.zeros_like(td_target))

    ce_rows = F.cross_entropy(logits, labels, reduction="none")
    # kl_div(input=log q, target=p) = p * (log p - log q), i.e. KL(p || q); 0 where p == 0.
    kl_rows = F.kl_div(F.log_softmax(td_logits, dim=1), td_target, reduction="none").sum(dim=1)

    # Division by a clamped count instead of a Python branch: no host sync, and with no valid
    # row the sums are exactly 0 yet still depend on logits and td_logits.
    count = valid.sum().clamp(min=1)
    ce = torch.where(valid, ce_rows, torch.zeros_like(ce_rows)).sum() / count
    kl = torch.where(valid, kl_rows, torch.zeros_like(kl_rows)).sum() / count
    return ce + td_weight * kl, ce, kl
