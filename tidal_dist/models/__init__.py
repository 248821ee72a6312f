"""Backbones, the heads that read their stage features, and the network a run trains; SimCLR's
projection head (projection_head.py) for `tidal-dist pretrain`."""

from tidal_dist.models.backbones import (
    ResNet18Cifar,
    SmallCNN,
    build_backbone,
    load_torchvision_weights,
    resnet18_imagenet,
    resnet50_imagenet,
)
from tidal_dist.models.heads import LossPredictionModule, StageHead, TDModule
from tidal_dist.models.network import Heads, Network, available_outputs, build_model

__all__ = [
    "Heads",
    "LossPredictionModule",
    "Network",
    "ResNet18Cifar",
    "SmallCNN",
    "StageHead",
    "available_outputs",
    "TDModule",
    "build_backbone",
    "build_model",
    "load_torchvision_weights",
    "resnet18_imagenet",
    "resnet50_imagenet",
]
