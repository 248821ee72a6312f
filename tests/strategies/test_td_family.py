"""dynamicAL's and TOD's scores against a direct computation of their papers' formulas on a toy
case: the per-sample gradient norm by autograd, the output discrepancy by numpy."""

import numpy as np
import torch

from tidal_dist.strategies import Outputs, ScoreContext, get_strategy


def test_dynamical_is_the_squared_last_layer_gradient_under_the_pseudo_label():
    torch.manual_seed(0)
    classifier = torch.nn.Linear(5, 4)
    h = torch.randn(7, 5) * 2.0
    with torch.no_grad():
        logits = classifier(h)
    got = get_strategy("dynamical").uncertainty(
        Outputs(ids=torch.arange(7), logits=logits, embedding=h, classifier=classifier),
        ScoreContext(cycle_seed=0))
    expected = []
    for i in range(7):  # ‖∇_{W,b} CE(f(x), ŷ)‖², ŷ the model's own prediction, by autograd
        classifier.zero_grad()
        out = classifier(h[i:i + 1])
        loss = torch.nn.functional.cross_entropy(out, out.argmax(dim=1))
        loss.backward()
        expected.append(float(classifier.weight.grad.pow(2).sum() + classifier.bias.grad.pow(2).sum()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert got.dtype == torch.float64

    no_bias = torch.nn.Linear(5, 4, bias=False)
    with torch.no_grad():
        logits = no_bias(h)
    got = get_strategy("dynamical").uncertainty(
        Outputs(ids=torch.arange(7), logits=logits, embedding=h, classifier=no_bias),
        ScoreContext(cycle_seed=0))
    out = no_bias(h[:1])
    torch.nn.functional.cross_entropy(out, out.argmax(dim=1)).backward()
    assert np.isclose(float(got[0]), float(no_bias.weight.grad.pow(2).sum()), rtol=1e-5)


def test_tod_is_the_l2_distance_of_the_two_models_outputs():
    rng = np.random.default_rng(3)
    now, before = rng.normal(size=(6, 3)) * 3, rng.normal(size=(6, 3)) * 3

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    expected = np.sqrt(((softmax(now) - softmax(before)) ** 2).sum(axis=1))
    strategy = get_strategy("tod")
    got = strategy.uncertainty(Outputs(ids=torch.arange(6), logits=torch.tensor(now),
                                       reference_logits=torch.tensor(before)),
                               ScoreContext(cycle_seed=0))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert (got <= np.sqrt(2)).all()
    same = strategy.uncertainty(Outputs(ids=torch.arange(6), logits=torch.tensor(now),
                                        reference_logits=torch.tensor(now) + 5.0),
                                ScoreContext(cycle_seed=0))
    np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-12)  # a shift of the logits: same output
