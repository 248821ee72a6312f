"""Backbone + TD prediction module as one nn.Module, so a single accelerator.prepare / DDP wrap
(and one optimizer, as the method allows) covers both."""

from __future__ import annotations

from torch import Tensor, nn

from tidal_dist.config import ModelConfig
from tidal_dist.models.backbones import build_backbone
from tidal_dist.models.td_module import TDModule


class TiDALNet(nn.Module):
    """forward(x) -> (classifier logits, TD-module logits).

    The stage features go to the module without detach: the KL term trains the backbone too.
    """

    def __init__(self, backbone: nn.Module, td_module: TDModule) -> None:
        super().__init__()
        self.backbone = backbone
        self.td_module = td_module
        self.num_classes: int = backbone.num_classes

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, features = self.backbone(x)
        return logits, self.td_module(features)


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> TiDALNet:
    backbone = build_backbone(cfg, num_classes, in_channels)
    td_module = TDModule(backbone.stage_channels, num_classes, hidden=cfg.td_hidden)
    return TiDALNet(backbone, td_module)
