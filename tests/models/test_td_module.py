import pytest
import torch

from tidal_dist.config import ModelConfig
from tidal_dist.models import Network, SmallCNN, TDModule, build_model
from tidal_dist.objectives.tidal import tidal_loss


@pytest.mark.parametrize("size", [28, 32, 224])
def test_td_module_any_input_size(size):
    channels = (4, 8, 16, 32)
    features = [torch.randn(2, c, size // 2**i, size // 2**i) for i, c in enumerate(channels)]
    out = TDModule(channels, num_classes=5, hidden=16)(features)
    assert out.shape == (2, 5)


def test_td_module_layers():
    module = TDModule((4, 8, 16, 32), num_classes=5)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in module.modules())
    assert module.classifier.in_features == 4 * 128


def _hand_loss(logits, td_logits, labels, target):
    """CE and KL(p || q) written out from their definitions."""
    b = logits.shape[0]
    log_p_cls = logits - logits.exp().sum(1, keepdim=True).log()
    ce = -log_p_cls[torch.arange(b), labels].sum() / b
    log_q = td_logits - td_logits.exp().sum(1, keepdim=True).log()
    kl = (target * (target.log() - log_q)).sum() / b
    return ce, kl


def test_tidal_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]])
    td_logits = torch.tensor([[0.2, -0.4, 1.5], [1.0, 1.0, -2.0]])
    labels = torch.tensor([0, 2])
    target = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]])
    total, ce, kl = tidal_loss(logits, td_logits, labels, target, td_weight=0.5)
    ce_ref, kl_ref = _hand_loss(logits, td_logits, labels, target)
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-6)
    assert kl.item() == pytest.approx(kl_ref.item(), rel=1e-6)
    assert total.item() == pytest.approx(ce_ref.item() + 0.5 * kl_ref.item(), rel=1e-6)
    # KL direction: KL(p || q) != KL(q || p) for these numbers, so an argument swap would show.
    q = torch.softmax(td_logits, 1)
    assert kl.item() != pytest.approx(((q * (q.log() - target.log())).sum() / 2).item(), rel=1e-3)


def test_tidal_loss_zero_target_entries():
    # A one-hot target (0 * log 0 = 0) must not give NaN.
    _, _, kl = tidal_loss(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0]),
                          torch.tensor([[1.0, 0.0, 0.0]]))
    assert kl.item() == pytest.approx(-torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), 0)[0].item())


def _tiny_net(num_classes=4):
    torch.manual_seed(0)
    backbone = SmallCNN(num_classes, in_channels=1, width=4)
    return Network(backbone, TDModule(backbone.stage_channels, num_classes, hidden=8))


def test_kl_trains_backbone_and_not_target():
    net = _tiny_net()
    x = torch.randn(3, 1, 12, 12)
    target = torch.softmax(torch.randn(3, 4), 1).requires_grad_()
    out = net(x)
    _, _, kl = tidal_loss(out["logits"], out["td_logits"], torch.tensor([0, 1, 2]), target)
    kl.backward()
    backbone_conv = net.backbone.stages[0][0].weight
    assert backbone_conv.grad is not None and backbone_conv.grad.abs().sum() > 0
    assert net.backbone.fc.weight.grad is None  # the classifier head plays no part in the KL
    assert target.grad is None


def test_valid_mask_excludes_rows():
    logits = torch.randn(4, 3)
    td_logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, -1, 2])  # row 2 is padding with a junk label
    target = torch.softmax(torch.randn(4, 3), 1)
    target[2] = float("nan")
    valid = torch.tensor([True, True, False, True])
    total, ce, kl = tidal_loss(logits, td_logits, labels, target, valid=valid)
    keep = valid.nonzero().squeeze(1)
    ref_total, ref_ce, ref_kl = tidal_loss(logits[keep], td_logits[keep], labels[keep], target[keep])
    assert torch.allclose(ce, ref_ce) and torch.allclose(kl, ref_kl) and torch.allclose(total, ref_total)


def test_no_valid_row_is_zero_and_backward_works():
    net = _tiny_net()
    out = net(torch.randn(2, 1, 12, 12))
    total, ce, kl = tidal_loss(out["logits"], out["td_logits"], torch.tensor([0, 1]), torch.full((2, 4), 0.25),
                               valid=torch.zeros(2, dtype=torch.bool))
    assert total.item() == 0 and ce.item() == 0 and kl.item() == 0
    total.backward()
    # Still connected to every parameter (zero gradients), as DDP needs on every rank.
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in net.parameters())


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18_cifar"])
def test_every_parameter_gets_a_gradient(backbone):
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone=backbone, width=8, td_hidden=16), num_classes=5, in_channels=3)
    out = net(torch.randn(2, 3, 16, 16))
    assert out["logits"].shape == out["td_logits"].shape == (2, 5)
    total, _, _ = tidal_loss(out["logits"], out["td_logits"], torch.tensor([1, 3]), torch.softmax(torch.randn(2, 5), 1))
    total.backward()
    no_grad = [name for name, p in net.named_parameters() if p.grad is None]
    assert no_grad == []
