"""Backbones, the TD prediction module, the combined TiDAL network and its loss."""

from tidal_dist.models.backbones import (
    ResNet18Cifar,
    SmallCNN,
    build_backbone,
    load_torchvision_weights,
    resnet18_imagenet,
    resnet50_imagenet,
)
from tidal_dist.models.td_module import TDModule, tidal_loss
from tidal_dist.models.tidal_net import TiDALNet, build_model

__all__ = [
    "ResNet18Cifar",
    "SmallCNN",
    "TDModule",
    "TiDALNet",
    "build_backbone",
    "build_model",
    "load_torchvision_weights",
    "resnet18_imagenet",
    "resnet50_imagenet",
    "tidal_loss",
]
