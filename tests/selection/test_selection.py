"""Top-k: highest uncertainty first, ties to the lower id, independent of input order."""

import numpy as np
import pytest

from tidal_dist.selection import top_k


def reference(ids, scores, k):
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order[:k]]


def test_matches_a_full_sort_with_ties():
    rng = np.random.default_rng(0)
    ids = rng.permutation(500).astype(np.int64)
    scores = rng.integers(0, 20, size=500).astype(np.float64)  # many ties
    for k in (1, 7, 50, 499, 500, 600):
        got = ids[top_k(ids, scores, k)].tolist()
        assert got == reference(ids.tolist(), scores.tolist(), min(k, 500))


def test_ties_broken_by_lower_id():
    ids = np.array([9, 3, 5, 1])
    scores = np.array([1.0, 1.0, 1.0, 0.5])
    assert ids[top_k(ids, scores, 2)].tolist() == [3, 5]


def test_order_of_inputs_does_not_matter():
    rng = np.random.default_rng(1)
    ids = np.arange(1000)
    scores = np.round(rng.random(1000), 2)
    perm = rng.permutation(1000)
    a = ids[top_k(ids, scores, 100)]
    b = ids[perm][top_k(ids[perm], scores[perm], 100)]
    np.testing.assert_array_equal(a, b)


def test_edge_cases():
    assert top_k(np.array([1, 2]), np.array([0.1, 0.2]), 0).tolist() == []
    assert top_k(np.zeros(0, np.int64), np.zeros(0), 3).tolist() == []
    with pytest.raises(ValueError, match="NaN scores for ids \\[2\\]"):
        top_k(np.array([1, 2]), np.array([0.1, np.nan]), 1)
