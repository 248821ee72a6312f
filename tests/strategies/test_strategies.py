"""Query strategies: TiDAL-H, TiDAL-M (classifier argmax), entropy, random."""

import math

import numpy as np
import pytest
import torch

from tidal_dist.job.errors import UserError
from tidal_dist.strategies import get_strategy
from tidal_dist.strategies.base import Outputs, ScoreContext
from tidal_dist.strategies.tidal import tidal_margin

CTX = ScoreContext(cycle_seed=0)


def outputs(logits, td_logits, ids=None):
    logits, td_logits = torch.as_tensor(logits).float(), torch.as_tensor(td_logits).float()
    ids = torch.arange(len(logits)) if ids is None else torch.tensor(ids)
    return Outputs(ids=ids, logits=logits, td_logits=td_logits)


def test_tidal_entropy_is_entropy_of_the_module_prediction():
    td = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    out = outputs([[9.0, 0, 0], [9.0, 0, 0]], td)  # classifier is confident: must not matter
    h = get_strategy("tidal_entropy").uncertainty(out, CTX)
    assert h[0].item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert h[1].item() == pytest.approx(math.log(3))


def test_tidal_margin_uses_the_classifier_argmax():
    # The classifier says class 0; the module puts 0.7 on class 2 and 0.2 on class 0.
    td = torch.log(torch.tensor([[0.2, 0.1, 0.7]]))
    margin = tidal_margin(torch.tensor([[5.0, 1.0, 0.0]]), td)
    assert margin.item() == pytest.approx(0.2 - 0.7)  # negative: module disagrees
    # With the module's own argmax it would have been 0.7 - 0.2 = +0.5.
    s = get_strategy("tidal_margin")
    out = outputs([[5.0, 1.0, 0.0], [0.0, 0.0, 5.0]], torch.log(torch.tensor([[0.2, 0.1, 0.7]] * 2)))
    u = s.uncertainty(out, CTX)
    assert u[0] > u[1]  # disagreement (margin -0.5) is more uncertain than agreement (+0.5)
    np.testing.assert_allclose(s.reported(u).numpy(), [-0.5, 0.5], atol=1e-6)


def test_classifier_entropy_ignores_the_module():
    out = outputs([[0.0, 0.0], [10.0, 0.0]], [[10.0, 0.0], [0.0, 0.0]])
    h = get_strategy("entropy").uncertainty(out, CTX)
    assert h[0].item() == pytest.approx(math.log(2)) and h[1].item() < 0.01


def test_random_is_a_deterministic_function_of_id_and_seed():
    s = get_strategy("random")
    a = s.uncertainty(outputs([[0.0]] * 4, [[0.0]] * 4, ids=[5, 6, 7, 8]), ScoreContext(1))
    b = s.uncertainty(outputs([[0.0]] * 2, [[0.0]] * 2, ids=[7, 5]), ScoreContext(1))
    assert b.tolist() == [a[2].item(), a[0].item()]  # batch order and composition don't matter
    c = s.uncertainty(outputs([[0.0]] * 4, [[0.0]] * 4, ids=[5, 6, 7, 8]), ScoreContext(2))
    assert not torch.equal(a, c)
    assert ((a >= 0) & (a < 1)).all()


def test_unknown_strategy_names_the_choices():
    with pytest.raises(UserError, match="unknown strategy 'tidal'.*tidal_entropy"):
        get_strategy("tidal")
