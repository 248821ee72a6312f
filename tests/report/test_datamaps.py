"""Data-map statistics: from td/stats.npy (per-sample sums, flat cost) they equal a direct
computation over the per-epoch probabilities (Cartography's definitions)."""

import numpy as np
import pytest

from tests.report.rundirs import random_probs, write_td
from tidal_dist.report.datamaps import from_epoch_probs, from_stats, load_datamap


def direct(probs, labels):
    """Straight from the definitions: per sample over epochs, mean / population std of the gold
    probability, fraction of epochs with argmax == gold."""
    conf, var, corr = [], [], []
    for i, y in enumerate(labels):
        trend = [float(p[i, y]) for p in probs]
        conf.append(sum(trend) / len(trend))
        var.append((sum((t - conf[-1]) ** 2 for t in trend) / len(trend)) ** 0.5)
        corr.append(sum(int(np.argmax(p[i]) == y) for p in probs) / len(probs))
    return np.array(conf), np.array(var), np.array(corr)


@pytest.fixture
def cycle(tmp_path):
    n, classes, epochs = 60, 4, 5
    ids = np.sort(np.random.default_rng(1).choice(10_000, n, replace=False)).astype(np.int64)
    labels = np.random.default_rng(2).integers(0, classes, n)
    probs = random_probs(epochs, n, classes, seed=3)
    probs[:, :5] = np.eye(classes, dtype=np.float32)[labels[:5]]  # always right: variability 0
    d = tmp_path / "cycle_0000"
    return d, ids, labels, probs


def test_stats_npy_equals_direct_computation(cycle):
    d, ids, labels, probs = cycle
    write_td(d, ids, labels, probs, stats=True, epochs=False)
    dm = load_datamap(d)
    assert dm.source == "stats"
    conf, var, corr = direct(probs, labels)
    np.testing.assert_array_equal(dm.ids, ids)
    np.testing.assert_array_equal(dm.gold, labels)
    np.testing.assert_allclose(dm.confidence, conf, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dm.variability, var, rtol=0, atol=1e-7)  # sqrt(E[p²]-E[p]²)
    np.testing.assert_array_equal(dm.correctness, corr)
    assert (dm.variability[:5] == 0).all() and (dm.confidence[:5] == 1).all()
    assert (dm.visits == len(probs)).all()


def test_per_epoch_records_give_the_same_map(cycle):
    d, ids, labels, probs = cycle
    write_td(d, ids, labels, probs, stats=False, epochs=True)
    dm = load_datamap(d)
    assert dm.source == "epochs"
    conf, var, corr = direct(probs, labels)
    np.testing.assert_allclose(dm.confidence, conf, atol=1e-12)
    np.testing.assert_allclose(dm.variability, var, atol=1e-12)
    np.testing.assert_array_equal(dm.correctness, corr)


def test_sources_agree_and_stats_win(cycle):
    d, ids, labels, probs = cycle
    write_td(d, ids, labels, probs, stats=True, epochs=True)
    a = load_datamap(d)
    b = from_epoch_probs(ids, labels, list(probs))
    assert a.source == "stats"
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-12)
    np.testing.assert_allclose(a.variability, b.variability, atol=1e-7)


def test_unvisited_rows_are_left_out():
    ids, gold = np.array([1, 2, 3]), np.array([0, 1, 0])
    stats = np.array([[1.5, 1.25, 2.0], [0.0, 0.0, 0.0], [0.3, 0.09, 0.0]])
    dm = from_stats(ids, gold, stats, np.array([2, 0, 1]))
    np.testing.assert_array_equal(dm.ids, [1, 3])
    np.testing.assert_allclose(dm.confidence, [0.75, 0.3])
    np.testing.assert_allclose(dm.variability, [0.25, 0.0], atol=1e-12)  # visits 1.0 and 0.5
    np.testing.assert_allclose(dm.correctness, [1.0, 0.0])


def test_nothing_recorded_means_no_map(tmp_path):
    d = tmp_path / "cycle_0000"
    write_td(d, np.arange(4), np.zeros(4, dtype=np.int64), random_probs(2, 4, 2), stats=False,
             epochs=False)
    assert load_datamap(d) is None
