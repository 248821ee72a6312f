"""Heads that read the backbone's four stage feature maps: the TD prediction module (TiDAL) and the
loss prediction module (Learning Loss). Both have the same trunk (tidal-method.md):

    per stage: global average pool -> Linear(C_k -> hidden) -> ReLU;  concatenate;  Linear -> out

The TiDAL reference code also builds four BatchNorm1d layers it never uses; they are left out, so
every parameter gets a gradient and DDP runs with find_unused_parameters=False.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class StageHead(nn.Module):
    """Pooled stage features -> `out_features` outputs."""

    def __init__(self, stage_channels: Sequence[int], out_features: int, hidden: int = 128) -> None:
        super().__init__()
        self.stage_heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU())
            for channels in stage_channels
        )
        self.classifier = nn.Linear(hidden * len(stage_channels), out_features)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.stage_heads):
            raise ValueError(f"{type(self).__name__} expects {len(self.stage_heads)} feature maps, "
                             f"got {len(features)}")
        pooled = [head(f) for head, f in zip(self.stage_heads, features)]
        return self.classifier(torch.cat(pooled, dim=1))


class TDModule(StageHead):
    """Predicts a sample's training dynamics: class logits m(x), predicted TD = softmax(m(x))
    (Kye et al., "TiDAL: Learning Training Dynamics for Active Learning", ICCV 2023, sec. 3.2)."""

    def __init__(self, stage_channels: Sequence[int], num_classes: int, hidden: int = 128) -> None:
        super().__init__(stage_channels, num_classes, hidden)


class LossPredictionModule(StageHead):
    """Predicts a sample's training loss, one number per sample (Yoo & Kweon, "Learning Loss for
    Active Learning", CVPR 2019, Fig. 2), with the TD module's trunk."""

    def __init__(self, stage_channels: Sequence[int], hidden: int = 128) -> None:
        super().__init__(stage_channels, 1, hidden)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return super().forward(features).squeeze(1)
