"""train.optimizer / train.schedule / train.warmup_epochs (training/optim.py) and train.freeze:
the protocol's SGD + step unchanged, AdamW + warm-up + cosine, and a linear probe in which only
the classifier and the heads learn."""

import math

import pytest
import torch

from tidal_dist.config import load_config
from tidal_dist.models import build_model
from tidal_dist.models.network import Heads
from tidal_dist.training.optim import build_optimizer, lr_factor


def lrs(cfg, model):
    opt, sched = build_optimizer(cfg, model)
    out = []
    for _ in range(cfg.train.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, out


def test_the_protocol_stays_the_default():
    cfg = load_config(None, ["train.epochs=10", "train.lr=0.1"])
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.train.warmup_epochs,
            cfg.train.freeze) == ("sgd", "step", 0, "none")
    opt, seen = lrs(cfg, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD)
    assert seen == pytest.approx([0.1] * 8 + [0.01] * 2)  # x0.1 at 0.8 of the epochs
    assert [cfg.train.lr * lr_factor(cfg, e) for e in range(10)] == pytest.approx(seen)


def test_adamw_with_warmup_and_cosine():
    cfg = load_config(None, ["train.epochs=6", "train.lr=0.004", "train.optimizer=adamw",
                             "train.schedule=cosine", "train.warmup_epochs=2",
                             "train.weight_decay=0.05"])
    opt, seen = lrs(cfg, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.05
    expected = [0.004 / 3, 0.008 / 3] + [0.002 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert seen == pytest.approx(expected)


def test_warmup_must_leave_epochs_to_train():
    from tidal_dist.job.errors import UserError

    with pytest.raises(UserError, match="train.warmup_epochs"):
        load_config(None, ["train.epochs=3", "train.warmup_epochs=3"])


def test_a_frozen_backbone_leaves_only_the_classifier_and_heads_learning():
    cfg = load_config(None, ["model.backbone=small_cnn", "model.width=4", "train.lr=0.5",
                             "train.freeze=backbone"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 3, 1, Heads(td=True, loss=True))
    net.freeze_backbone()
    net.train()
    learning = {n for n, p in net.named_parameters() if p.requires_grad}
    assert learning == {n for n, _ in net.named_parameters()
                        if n.startswith(("backbone.fc.", "td_module.", "loss_module."))}
    assert not net.backbone.stages.training and net.backbone.fc.training and net.td_module.training
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt, _ = build_optimizer(cfg, net)
    out = net(torch.randn(4, 1, 8, 8))
    (out["logits"].sum() + out["td_logits"].sum() + out["loss_pred"].sum()).backward()
    opt.step()
    after = net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("backbone.fc.", "td_module.", "loss_module."))
                           for k in changed)  # BatchNorm running statistics included: unchanged
