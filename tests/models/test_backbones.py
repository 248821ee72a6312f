import logging

import pytest
import torch
import torchvision
from torch import nn

from tidal_dist.config import ModelConfig
from tidal_dist.job.errors import UserError
from tidal_dist.models import (
    ResNet18Cifar,
    SmallCNN,
    build_backbone,
    resnet18_imagenet,
    resnet50_imagenet,
)


def _check_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        logits, features = model(x)
    assert logits.shape == (x.shape[0], num_classes)
    assert len(features) == 4
    assert tuple(f.shape[1] for f in features) == tuple(model.stage_channels)
    assert all(f.shape[0] == x.shape[0] for f in features)
    assert model.num_classes == num_classes
    return features


@pytest.mark.parametrize("make", [lambda c: SmallCNN(10, c), lambda c: ResNet18Cifar(10, c)],
                         ids=["small_cnn", "resnet18_cifar"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_cifar_style_shapes(make, channels, size):
    features = _check_output(make(channels), torch.randn(2, channels, size, size), 10)
    assert features[0].shape[-1] == size  # stride-1 stem, no max-pool: stage 1 at full resolution
    assert features[3].shape[-1] == -(-size // 8)


def test_resnet18_imagenet_224():
    features = _check_output(resnet18_imagenet(5), torch.randn(1, 3, 224, 224), 5)
    assert [f.shape[-1] for f in features] == [56, 28, 14, 7]


def test_resnet50_imagenet_small_input():
    _check_output(resnet50_imagenet(7), torch.randn(1, 3, 64, 64), 7)


def test_imagenet_resnet_one_channel():
    _check_output(resnet18_imagenet(4, in_channels=1), torch.randn(1, 1, 64, 64), 4)


def test_small_cnn_param_count():
    n = sum(p.numel() for p in SmallCNN(10, 3, width=16).parameters())
    assert 50_000 < n < 200_000


def test_resnet18_cifar_stem():
    model = ResNet18Cifar(10, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    n = sum(p.numel() for p in model.parameters())
    assert 11_000_000 < n < 11_300_000  # ResNet-18 on 10 classes: ~11.17M


def test_build_backbone_dispatch():
    assert isinstance(build_backbone(ModelConfig(backbone="small_cnn", width=8), 3, 1), SmallCNN)
    assert build_backbone(ModelConfig(backbone="small_cnn", width=8), 3, 1).stage_channels == (8, 16, 32, 64)
    assert isinstance(build_backbone(ModelConfig(backbone="resnet18_cifar"), 3, 3), ResNet18Cifar)
    assert build_backbone(ModelConfig(backbone="resnet18"), 3, 3).stage_channels == (64, 128, 256, 512)
    with pytest.raises(UserError, match="model.weights"):
        build_backbone(ModelConfig(backbone="small_cnn", weights="w.pt"), 3, 1)


# --- loading local torchvision weights ------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A torchvision resnet18 state_dict with a 7-class head (the model will want 10)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None, num_classes=7).state_dict()
    path = tmp_path_factory.mktemp("weights") / "r18.pt"
    torch.save(state, path)
    return path, state


def test_load_weights_reinitialises_other_sized_head(resnet18_weights, caplog):
    path, state = resnet18_weights
    with caplog.at_level(logging.WARNING, logger="tidal_dist.models.backbones"):
        model = resnet18_imagenet(10, weights_path=path)
    assert "re-initialising fc" in caplog.text
    loaded = model.net.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (10, 512)


def test_load_weights_same_head(resnet18_weights):
    path, state = resnet18_weights
    model = resnet18_imagenet(7, weights_path=path)
    assert torch.equal(model.net.fc.weight, state["fc.weight"])


def test_load_weights_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError, match="nope.pt"):
        resnet18_imagenet(10, weights_path=missing)


def test_load_weights_bad_keys(tmp_path, resnet18_weights):
    _, state = resnet18_weights
    bad = {("backbone." + k if k.startswith("layer1") else k): v for k, v in state.items()}
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(UserError, match=r"bad\.pt.*layer1\.0\.bn1\.bias"):
        resnet18_imagenet(10, weights_path=path)


def test_load_weights_wrong_architecture(resnet18_weights):
    path, _ = resnet18_weights
    with pytest.raises(UserError, match="r18.pt"):
        resnet18_imagenet(10, in_channels=1, weights_path=path)  # conv1 shape differs


def test_load_weights_not_a_torch_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.pt"):
        resnet18_imagenet(10, weights_path=path)
