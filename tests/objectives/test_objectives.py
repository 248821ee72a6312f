"""Training objectives: which heads, which gradients, the ranking loss, loss normalisation."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tidal_dist.config import Config, TrainConfig, load_config
from tidal_dist.job.errors import UserError
from tidal_dist.models import Heads, LossPredictionModule, Network, SmallCNN, TDModule
from tidal_dist.objectives import StepBatch, get_objective, resolve_objective
from tidal_dist.objectives.lloss import mirror_pairs, ranking_loss
from tidal_dist.strategies import get_strategy, registry
from tidal_dist.training.train import global_rows


def net(heads=Heads(td=True, loss=True), classes=4):
    torch.manual_seed(0)
    backbone = SmallCNN(classes, in_channels=1, width=4)
    td = TDModule(backbone.stage_channels, classes, hidden=8) if heads.td else None
    loss = LossPredictionModule(backbone.stage_channels, hidden=8) if heads.loss else None
    return Network(backbone, td, loss)


def batch(n=6, classes=4, valid=None):
    torch.manual_seed(1)
    x = torch.randn(n, 1, 12, 12)
    y = torch.randint(0, classes, (n,))
    target = torch.softmax(torch.randn(n, classes), 1)
    valid = torch.ones(n, dtype=torch.bool) if valid is None else valid
    return x, StepBatch(y, valid, target, float(valid.sum()))


def backbone_grads(model):
    return {name: p.grad.clone() for name, p in model.backbone.named_parameters()}


def ce_only_grads(model, x, b):
    plain = copy.deepcopy(model)
    plain.zero_grad(set_to_none=True)
    logits = plain.backbone(x)[0]
    F.cross_entropy(logits, b.labels).backward()
    return backbone_grads(plain)


def run_objective(model, name, x, b, cfg=TrainConfig(), epoch=0):
    objective = get_objective(name)
    model.zero_grad(set_to_none=True)
    out = model(x, **objective.detach(epoch, cfg))
    total, parts = objective.loss(out, b, cfg, epoch)
    total.backward()
    return total, parts


def test_ce_objective_gives_the_backbone_exactly_the_ce_gradient():
    model = net(Heads(td=True, loss=False))
    x, b = batch()
    _, parts = run_objective(model, "ce", x, b)
    assert set(parts) == {"ce", "kl"} and parts["kl"] > 0  # the module is trained...
    expected = ce_only_grads(model, x, b)
    for name, grad in backbone_grads(model).items():  # ...but never moves the classifier
        torch.testing.assert_close(grad, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.td_module.parameters())


def test_tidal_objective_lets_the_kl_reach_the_backbone():
    model = net(Heads(td=True, loss=False))
    x, b = batch()
    run_objective(model, "tidal", x, b)
    expected = ce_only_grads(model, x, b)
    got = backbone_grads(model)
    conv = "stages.0.0.weight"
    assert not torch.allclose(got[conv], expected[conv])
    torch.testing.assert_close(got["fc.weight"], expected["fc.weight"])  # the KL skips the classifier head


def test_lloss_objective_detaches_the_loss_head_after_its_epoch():
    cfg = TrainConfig(epochs=10, lloss_detach_at=0.6)
    model = net(Heads(td=True, loss=True))
    x, b = batch()
    _, parts = run_objective(model, "lloss", x, b, cfg, epoch=5)  # before epoch 6: attached
    assert set(parts) == {"ce", "lloss", "kl"}
    conv = "stages.0.0.weight"
    assert not torch.allclose(backbone_grads(model)[conv], ce_only_grads(model, x, b)[conv])
    run_objective(model, "lloss", x, b, cfg, epoch=6)  # from epoch 6 on: CE alone reaches it
    expected = ce_only_grads(model, x, b)
    for name, grad in backbone_grads(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert all(p.grad is not None for p in model.loss_module.parameters())


def test_mirror_pairs_skip_padding_and_the_middle_row():
    valid = torch.tensor([True, True, True, True, True, False, False, False])
    first, second, ok = mirror_pairs(valid)
    pairs = {(int(i), int(j)) for i, j, o in zip(first, second, ok) if o}
    assert pairs == {(0, 4), (1, 3)}  # 5 valid rows: row 2 has no partner; padding never pairs


def test_ranking_losses_on_hand_made_pairs():
    pred = torch.tensor([2.0, 0.0, 1.0, 3.0])
    true = torch.tensor([5.0, 1.0, 2.0, 1.0])  # pairs (0, 3): l0 > l3; (1, 2): l1 < l2
    valid = torch.ones(4, dtype=torch.bool)
    # BCE(sigmoid(d), t): pair (0,3): d = -1, t = 1; pair (1,2): d = -1, t = 0
    bce = (-torch.log(torch.sigmoid(torch.tensor(-1.0))) - torch.log(1 - torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert ranking_loss(pred, true, valid, "bce").item() == pytest.approx(bce.item(), rel=1e-6)
    # margin: max(0, -sign * d + 1): pair (0,3): sign +1, d -1 -> 2; pair (1,2): sign -1, d -1 -> 0
    assert ranking_loss(pred, true, valid, "margin", 1.0).item() == pytest.approx(1.0)
    no_pairs = ranking_loss(pred.requires_grad_(), true, torch.tensor([True, False, False, False]))
    assert no_pairs.item() == 0 and no_pairs.requires_grad  # still in the graph for DDP


def test_global_rows_weights_the_partial_last_batch_by_its_valid_rows():
    # 61 ids, per-rank batch 4, 3 ranks: global batches of 12; the last (step 5) holds 1 valid row.
    assert global_rows(61, 0, 4, 3) == pytest.approx(12 / 3)
    assert global_rows(61, 5, 4, 3) == pytest.approx(1 / 3)
    assert global_rows(61, 5, 12, 1) == pytest.approx(1.0)
    assert global_rows(61, 9, 4, 3) == pytest.approx(1 / 3)  # beyond the end: never 0


def test_normalised_terms_sum_to_the_global_mean_across_ranks():
    """Two ranks' losses, each normalised by global_rows, average (as DDP averages gradients) to
    the single-process mean over all valid rows."""
    logits = torch.randn(8, 3)
    labels = torch.randint(0, 3, (8,))
    valid = torch.tensor([True] * 5 + [False] * 3)
    objective = get_objective("ce")
    cfg = TrainConfig(record_td=False)
    whole = objective.loss({"logits": logits}, StepBatch(labels, valid, None, 5.0), cfg, 0)[0]
    ranks = [objective.loss({"logits": logits[r::2]}, StepBatch(labels[r::2], valid[r::2], None, 5 / 2),
                            cfg, 0)[0] for r in range(2)]
    assert (sum(ranks) / 2).item() == pytest.approx(whole.item(), rel=1e-6)


def test_auto_objective_follows_the_strategy():
    expected = {"tidal_entropy": "tidal", "tidal_margin": "tidal", "tidal_cluster": "tidal",
                "lloss": "lloss"}
    for name in registry():
        cfg = load_config(None, [f"al.strategy={name}"])
        assert resolve_objective(cfg, get_strategy(name).objective).name == expected.get(name, "ce")
    cfg = load_config(None, ["al.strategy=entropy", "train.objective=tidal"])  # the ablation
    assert resolve_objective(cfg, "ce").name == "tidal"


def test_objective_settings_that_cannot_work():
    with pytest.raises(UserError, match="train.objective' expects 'auto' \\| 'ce'"):
        load_config(None, ["train.objective=focal"])
    with pytest.raises(UserError, match="train.record_td=true"):
        get_objective("tidal").heads(TrainConfig(record_td=False))
    with pytest.raises(UserError, match="per-rank batch must be even.*train.batch_size=12"):
        get_objective("lloss").validate(TrainConfig(batch_size=10), world_size=2)
    get_objective("lloss").validate(TrainConfig(batch_size=12), world_size=2)
    assert get_objective("ce").heads(Config().train) == Heads(td=True, loss=False)
    assert get_objective("ce").part_names(TrainConfig(record_td=False)) == ("ce",)
