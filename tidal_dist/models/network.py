"""The network a run trains: the backbone plus the heads its objective needs, as one nn.Module so a
single accelerator.prepare / DDP wrap (and one optimizer) covers all of it.

    out = net(x, detach_td=False, detach_loss=False)
    out["logits"]      classifier logits [B, C]
    out["embedding"]   pooled penultimate features [B, D]
    out["td_logits"]   TD module logits [B, C]        (when the net has a TD module)
    out["loss_pred"]   predicted loss [B]             (when the net has a loss prediction module)

`x` is a batch of images, or a BackboneOutputs computed ahead (train.freeze=backbone's fast path).
`detach_td` / `detach_loss` cut the stage features feeding a head from the backbone's graph: the
head still learns, but its loss cannot change the classifier (TiDAL's own objective keeps them
attached; see tidal_dist/objectives/).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tidal_dist.config import ModelConfig
from tidal_dist.models.backbones import build_backbone
from tidal_dist.models.heads import LossPredictionModule, TDModule


@dataclass(frozen=True)
class Heads:
    """Which heads sit next to the classifier."""

    td: bool = True
    loss: bool = False


class BackboneOutputs(NamedTuple):
    """What the classifier and the heads read of the backbone, computed ahead (the frozen-feature
    path, training/frozen_features.py): the embedding [B, D] and the four stage features, average
    pooled ([B, C_k, 1, 1]: the heads' own pooling leaves them as they are)."""

    embedding: Tensor
    stages: list[Tensor]


def pooled_outputs(backbone: nn.Module, x: Tensor) -> BackboneOutputs:
    embedding, stages = backbone.features(x)
    return BackboneOutputs(embedding, [torch.mean(f, dim=(2, 3), keepdim=True) for f in stages])


class Network(nn.Module):
    def __init__(self, backbone: nn.Module, td_module: TDModule | None = None,
                 loss_module: LossPredictionModule | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.td_module = td_module
        self.loss_module = loss_module
        self.num_classes: int = backbone.num_classes
        self.frozen_backbone = False

    def freeze_backbone(self) -> None:
        """train.freeze=backbone, a linear probe: the backbone's parameters stop learning (its
        classifier excepted) and it stays in eval mode, so BatchNorm statistics and dropout
        match the pretrained network's; the classifier and the heads train as usual."""
        classifier = {id(p) for p in self.backbone.classifier.parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in classifier)
        self.frozen_backbone = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "Network":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
            self.backbone.classifier.train(mode)
        return self

    def forward(self, x: Tensor | BackboneOutputs, detach_td: bool = False,
                detach_loss: bool = False) -> dict[str, Tensor]:
        # images, or the backbone's outputs computed ahead of time (a frozen backbone's)
        embedding, stages = x if isinstance(x, BackboneOutputs) else self.backbone.features(x)
        out = {"logits": self.backbone.classifier(embedding), "embedding": embedding}
        if self.td_module is not None:
            out["td_logits"] = self.td_module([f.detach() for f in stages] if detach_td else stages)
        if self.loss_module is not None:
            out["loss_pred"] = self.loss_module([f.detach() for f in stages] if detach_loss
                                                else stages)
        return out


def available_outputs(network: nn.Module) -> set[str]:
    """The per-sample outputs (strategies.OUTPUTS) a network can give: logits always, the heads'
    outputs when it has them, and the embedding (with MC dropout on it) when its backbone exposes
    features(x) and classifier. Works for stand-in models too (by attribute)."""
    have = {"logits"}
    if getattr(network, "td_module", None) is not None:
        have.add("td_logits")
    if getattr(network, "loss_module", None) is not None:
        have.add("loss_pred")
    backbone = getattr(network, "backbone", None)
    if hasattr(backbone, "features") and hasattr(backbone, "classifier"):
        have |= {"embedding", "mc_probs"}
    return have


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int,
                heads: Heads = Heads()) -> Network:
    backbone = build_backbone(cfg, num_classes, in_channels)
    td = TDModule(backbone.stage_channels, num_classes, hidden=cfg.td_hidden) if heads.td else None
    loss = LossPredictionModule(backbone.stage_channels, hidden=cfg.td_hidden) if heads.loss else None
    return Network(backbone, td, loss)


def heads_of(state: dict[str, Tensor]) -> Heads:
    """Which heads a saved Network had, from its parameter names."""
    return Heads(td=any(k.startswith("td_module.") for k in state),
                 loss=any(k.startswith("loss_module.") for k in state))


def network_from_state(cfg: ModelConfig, num_classes: int, in_channels: int,
                       state: dict[str, Tensor]) -> Network:
    """The Network a saved state_dict (a cycle's model.pt) came from, with it loaded: its heads
    read from the parameter names, pretrained-weight files not read (the state replaces them)."""
    network = build_model(replace(cfg, weights=None), num_classes, in_channels, heads_of(state))
    network.load_state_dict(state)
    return network
