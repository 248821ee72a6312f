"""Imbalanced pools: counts follow the reference formula, reserved ids, determinism."""

import numpy as np
import pytest

from tidal_dist.data.imbalance import imbalanced_pool
from tidal_dist.job.errors import UserError

CIFAR10_IR10 = [4999, 3870, 2996, 2320, 1796, 1391, 1077, 833, 645, 499]


@pytest.fixture(scope="module")
def cifar10_labels():
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), 5000))


def test_cifar10_ratio_10_counts(cifar10_labels):
    ids = np.arange(len(cifar10_labels))
    pool, reserved = imbalanced_pool(cifar10_labels, ids, 10, 10.0, seed=1)
    assert np.bincount(cifar10_labels[pool], minlength=10).tolist() == CIFAR10_IR10
    assert np.bincount(cifar10_labels[reserved], minlength=10).tolist() == [1] * 10
    assert len(np.intersect1d(pool, reserved)) == 0
    assert np.all(np.diff(pool) > 0) and np.all(np.diff(reserved) > 0)


def test_deterministic_and_seed_dependent(cifar10_labels):
    ids = np.arange(len(cifar10_labels))
    a = imbalanced_pool(cifar10_labels, ids, 10, 100.0, seed=3)
    b = imbalanced_pool(cifar10_labels, ids[::-1].copy(), 10, 100.0, seed=3)  # id order does not matter
    c = imbalanced_pool(cifar10_labels, ids, 10, 100.0, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert np.bincount(cifar10_labels[a[0]], minlength=10)[-1] == 49


def test_subset_of_ids_and_ratio_one():
    labels = np.repeat(np.arange(3), 10)
    ids = np.arange(0, 30, 2)  # only the even ids: 5 per class
    pool, reserved = imbalanced_pool(labels, ids, 3, 1.0, seed=0)
    assert set(pool) | set(reserved) == set(ids.tolist())  # ratio 1 keeps everything


def test_bad_inputs():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(UserError, match="ratio must be >= 1 .got 0.5"):
        imbalanced_pool(labels, np.arange(12), 3, 0.5, seed=0)
    with pytest.raises(UserError, match="class 3 has no sample"):
        imbalanced_pool(labels, np.arange(12), 4, 10.0, seed=0)
