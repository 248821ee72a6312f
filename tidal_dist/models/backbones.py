"""Classifier backbones. Every backbone returns (logits, [f1, f2, f3, f4]): the class logits and the
feature maps of its four stages, which feed the TD prediction and loss prediction modules
(tidal-method.md).

Every backbone also exposes `stage_channels` (channels of f1..f4), `num_classes`, and the split
that query strategies need: `features(x) -> (embedding, stages)` with the pooled penultimate
embedding (`embedding_dim` wide: Core-set, BADGE, BALD's dropout point) and `classifier`, the
final linear layer applied to it. All of them end in adaptive pooling, so any input size works
(28x28 Fashion-MNIST, 32x32 CIFAR, 224x224 ImageNet-style).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from tidal_dist.config import ModelConfig
from tidal_dist.job.errors import UserError

log = logging.getLogger(__name__)

StageFeatures = list[Tensor]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # No bias: a BatchNorm follows every conv.
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_conv_bn(module: nn.Module) -> None:
    """He et al. 2015 ("Delving deep into rectifiers") init for convs; BatchNorm starts as identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# ResNet-18, CIFAR variant


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut: He et al. 2016, "Deep Residual
    Learning for Image Recognition", Fig. 2 / option B shortcuts when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """ResNet-18 (He et al. 2016: BasicBlocks [2, 2, 2, 2], widths 64..512) in the variant used for
    32x32 inputs by TiDAL and most active-learning papers: a 3x3 stride-1 stem and no max-pool, so
    small images are not downsampled 4x before the first stage."""

    stage_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    blocks_per_stage = (2, 2, 2, 2)
    embedding_dim = 512

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            _conv3x3(in_channels, 64, stride=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        stages = []
        in_ch = 64
        for i, (out_ch, blocks) in enumerate(zip(self.stage_channels, self.blocks_per_stage)):
            first_stride = 1 if i == 0 else 2  # stages 2..4 halve the resolution
            layers = [BasicBlock(in_ch, out_ch, first_stride)]
            layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        _init_conv_bn(self)

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def features(self, x: Tensor) -> tuple[Tensor, StageFeatures]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return torch.flatten(self.pool(f4), 1), [f1, f2, f3, f4]

    def forward(self, x: Tensor) -> tuple[Tensor, StageFeatures]:
        embedding, stages = self.features(x)
        return self.fc(embedding), stages


# ---------------------------------------------------------------------------------------------
# Small CNN for CPU demos and tests


class SmallCNN(nn.Module):
    """Four conv-bn-relu stages of widths w, 2w, 4w, 8w; stages 2..4 downsample by 2.
    About 100k parameters at width 16: trains in seconds on a CPU."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise UserError(f"config key 'model.width': must be >= 1 (got {width})")
        self.num_classes = num_classes
        self.stage_channels: tuple[int, int, int, int] = (width, 2 * width, 4 * width, 8 * width)
        self.embedding_dim = 8 * width
        stages = []
        in_ch = in_channels
        for i, out_ch in enumerate(self.stage_channels):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_conv3x3(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch),
                                        nn.ReLU(inplace=True)))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        _init_conv_bn(self)

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def features(self, x: Tensor) -> tuple[Tensor, StageFeatures]:
        stages = []
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        return torch.flatten(self.pool(x), 1), stages

    def forward(self, x: Tensor) -> tuple[Tensor, StageFeatures]:
        embedding, stages = self.features(x)
        return self.fc(embedding), stages


# ---------------------------------------------------------------------------------------------
# ImageNet-style ResNets from torchvision


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet (7x7 stride-2 stem + max-pool) whose forward also returns the outputs
    of layer1..layer4. The torchvision model is kept whole as `net`, so its state_dict keys are
    torchvision's own under the `net.` prefix."""

    def __init__(self, net: torchvision.models.ResNet, stage_channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.net = net
        self.stage_channels = stage_channels
        self.num_classes = net.fc.out_features

    @property
    def classifier(self) -> nn.Linear:
        return self.net.fc

    @property
    def embedding_dim(self) -> int:
        return self.stage_channels[-1]

    def features(self, x: Tensor) -> tuple[Tensor, StageFeatures]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        f1 = n.layer1(x)
        f2 = n.layer2(f1)
        f3 = n.layer3(f2)
        f4 = n.layer4(f3)
        return torch.flatten(n.avgpool(f4), 1), [f1, f2, f3, f4]

    def forward(self, x: Tensor) -> tuple[Tensor, StageFeatures]:
        embedding, stages = self.features(x)
        return self.net.fc(embedding), stages


def _replace_input_channels(net: torchvision.models.ResNet, in_channels: int) -> None:
    if in_channels != net.conv1.in_channels:
        old = net.conv1
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                              stride=old.stride, padding=old.padding, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def fit_builtin_state(own: dict[str, Tensor], state: dict[str, Tensor], path: Path,
                      ) -> tuple[dict[str, Tensor], list[str]]:
    """`state` checked key by key against `own` (a built-in backbone's state_dict, real or on
    the meta device): returns (state to load, classifier keys dropped because their shape
    differs); any other missing, unexpected or misshaped key is a UserError naming the file."""
    fc_keys = [k for k in ("fc.weight", "fc.bias") if k in own]
    dropped: list[str] = []
    if any(k in state and state[k].shape != own[k].shape for k in fc_keys):
        dropped = fc_keys
        state = {k: v for k, v in state.items() if k not in fc_keys}
    missing = sorted(k for k in own if k not in state and k not in dropped)
    unexpected = sorted(k for k in state if k not in own)
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                         for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches: {_few(wrong_shape)}")
        raise UserError(f"model weights file '{path}' does not fit the model ({'; '.join(parts)}); "
                        f"expected a state_dict of the same architecture (torchvision's for "
                        f"resnet18 / resnet50; `tidal-dist pretrain` writes one for any backbone)")
    return state, dropped


def _weights_file(weights_path: str | Path) -> dict[str, Tensor]:
    from tidal_dist.models.timm_backbone import read_state_dict

    path = Path(weights_path)
    if not path.is_file():
        raise UserError(f"config key 'model.weights': file '{path}' does not exist")
    return read_state_dict(path)


def load_torchvision_weights(net: nn.Module, weights_path: str | Path) -> None:
    """Load a local state_dict (safetensors, or torch.save read with weights_only=True) into a
    built-in backbone's own module (`weights_module`): a torchvision ResNet, or SmallCNN /
    ResNet18Cifar (e.g. the file `tidal-dist pretrain` writes). A classifier head of another size
    (e.g. ImageNet's 1000 classes) is dropped and `fc` keeps its fresh init; anything else that
    does not fit is a UserError naming the file and the offending keys."""
    path = Path(weights_path)
    state, dropped = fit_builtin_state(net.state_dict(), _weights_file(path), path)
    if dropped:
        log.warning("weights '%s': classifier head has another shape than the model's %s; "
                    "loading the backbone weights and re-initialising fc", path,
                    tuple(net.state_dict()["fc.weight"].shape))
    net.load_state_dict(state, strict=False)  # strict checks done above; fc may be left out


def _torchvision_resnet(arch: str, stage_channels: tuple[int, int, int, int], num_classes: int,
                        in_channels: int, weights_path: str | Path | None) -> TorchvisionResNet:
    # weights=None: never download; pretrained weights come only from a local file.
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    _replace_input_channels(net, in_channels)
    if weights_path is not None:
        load_torchvision_weights(net, weights_path)
    return TorchvisionResNet(net, stage_channels)


def resnet18_imagenet(num_classes: int, in_channels: int = 3,
                      weights_path: str | Path | None = None) -> TorchvisionResNet:
    """torchvision ResNet-18 (He et al. 2016, ImageNet stem)."""
    return _torchvision_resnet("resnet18", (64, 128, 256, 512), num_classes, in_channels, weights_path)


def resnet50_imagenet(num_classes: int, in_channels: int = 3,
                      weights_path: str | Path | None = None) -> TorchvisionResNet:
    """torchvision ResNet-50 (He et al. 2016, bottleneck blocks); the iNaturalist protocol."""
    return _torchvision_resnet("resnet50", (256, 512, 1024, 2048), num_classes, in_channels, weights_path)


# ---------------------------------------------------------------------------------------------


def weights_module(backbone: nn.Module) -> nn.Module:
    """The module whose state_dict `model.weights` holds: a wrapped torchvision or timm network
    (`net`, its keys without the wrapper's prefix), else the built-in backbone itself."""
    return getattr(backbone, "net", backbone)


def check_builtin_weights(cfg: ModelConfig, num_classes: int, in_channels: int) -> list[str]:
    """The load's checks for a built-in backbone's model.weights on a model built without
    memory (meta device), for `run --dry-run` and before a run writes anything; returns notes
    (a replaced classifier)."""
    from dataclasses import replace

    path = Path(cfg.weights)
    state = _weights_file(path)
    with torch.device("meta"):
        net = weights_module(build_backbone(replace(cfg, weights=None), num_classes, in_channels))
    _, dropped = fit_builtin_state(net.state_dict(), state, path)
    return [f"weights '{path}': classifier ({', '.join(dropped)}) replaced for {num_classes} "
            f"classes"] if dropped else []


def build_backbone(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The backbone named by cfg.backbone."""
    from tidal_dist.models.timm_backbone import build_timm_backbone, timm_name

    name = timm_name(cfg.backbone)
    if name is not None:
        return build_timm_backbone(name, num_classes, in_channels, cfg.weights)
    if cfg.weights == "hub":
        raise UserError(f"config key 'model.weights': 'hub' is for timm:NAME backbones; give "
                        f"'{cfg.backbone}' a local state_dict file")
    if cfg.backbone in ("small_cnn", "resnet18_cifar"):
        net = SmallCNN(num_classes, in_channels, width=cfg.width) if cfg.backbone == "small_cnn" \
            else ResNet18Cifar(num_classes, in_channels)
        if cfg.weights is not None:
            load_torchvision_weights(net, cfg.weights)
        return net
    if cfg.backbone == "resnet18":
        return resnet18_imagenet(num_classes, in_channels, cfg.weights)
    if cfg.backbone == "resnet50":
        return resnet50_imagenet(num_classes, in_channels, cfg.weights)
    raise UserError(f"config key 'model.backbone': unknown backbone '{cfg.backbone}'; "
                    f"expected small_cnn, resnet18_cifar, resnet18, resnet50 or timm:NAME")
