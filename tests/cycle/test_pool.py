"""The experiment's pool and initial labeled set, balanced and imbalanced."""

import numpy as np
import pytest

from tidal_dist.config import load_config
from tidal_dist.cycle.pool import initial_labeled_set, pool_ids
from tidal_dist.data.manifest import load_labels
from tidal_dist.job.errors import UserError


def cfg_for(root, *extra):
    return load_config(None, [f"data.root={root}", *extra])


def test_balanced_initial_set_is_seeded(synthetic_dataset):
    a = initial_labeled_set(cfg_for(synthetic_dataset, "al.initial=30", "run.seed=1"))
    b = initial_labeled_set(cfg_for(synthetic_dataset, "al.initial=30", "run.seed=1"))
    c = initial_labeled_set(cfg_for(synthetic_dataset, "al.initial=30", "run.seed=2"))
    assert len(a) == 30 and len(np.unique(a)) == 30 and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    ids, reserved = pool_ids(cfg_for(synthetic_dataset))
    assert len(ids) == 203 and len(reserved) == 0


def test_imbalanced_pool_reserves_one_per_class_in_the_initial_set(synthetic_dataset):
    cfg = cfg_for(synthetic_dataset, "data.imbalance_ratio=10", "al.initial=12", "run.seed=3")
    ids, reserved = pool_ids(cfg)
    labels = load_labels(synthetic_dataset, "pool")
    assert sorted(labels[reserved].tolist()) == [0, 1, 2, 3, 4]
    counts = np.bincount(labels[ids], minlength=5)
    assert counts[0] > counts[-1] and (np.diff(counts) <= 0).all()  # long tail, class 0 the head
    initial = initial_labeled_set(cfg)
    assert len(initial) == 12 and np.isin(reserved, initial).all() and np.isin(initial, ids).all()


def test_initial_set_larger_than_pool_is_an_error(synthetic_dataset):
    with pytest.raises(UserError, match="al.initial.*exceeds the pool's 203"):
        initial_labeled_set(cfg_for(synthetic_dataset, "al.initial=500"))


def test_validation_hold_out_is_fixed_and_never_in_the_pool(synthetic_dataset):
    from tidal_dist.cycle.pool import validation_ids

    a = load_config(None, [f"data.root={synthetic_dataset}", "al.val_size=30", "run.seed=1",
                           "al.initial=20"])
    b = load_config(None, [f"data.root={synthetic_dataset}", "al.val_size=30", "run.seed=2",
                           "al.initial=20"])
    val = validation_ids(a)
    assert len(val) == 30 and np.array_equal(val, validation_ids(b))  # the same for every seed
    pool, _ = pool_ids(a)
    assert len(pool) == 203 - 30 and not np.isin(val, pool).any()
    assert not np.isin(val, initial_labeled_set(a)).any()
    with pytest.raises(UserError, match="al.val_size"):
        validation_ids(load_config(None, [f"data.root={synthetic_dataset}", "al.val_size=203"]))
