"""What run.seed varies: the initial labeled set, and (unless al.subset_seed is set) the
candidate subsets of every cycle."""

import numpy as np

from tidal_dist.config import Config, candidate_seed, load_config
from tidal_dist.cycle.pool import initial_labeled_set
from tidal_dist.cycle.score import draw_candidates


def test_subset_seed_follows_run_seed_unless_set():
    assert Config().al.subset_seed is None
    assert candidate_seed(load_config(None, ["run.seed=3"])) == 3
    assert candidate_seed(load_config(None, ["run.seed=3", "al.subset_seed=0"])) == 0
    assert candidate_seed(load_config(None, ["run.seed=3", "al.subset_seed=null"])) == 3


def test_each_seed_draws_its_own_initial_set_and_subsets(synthetic_dataset):
    unlabeled = np.arange(1000)
    draws = {}
    for seed in (0, 1):
        cfg = load_config(None, [f"data.root={synthetic_dataset}", "al.initial=20",
                                 f"run.seed={seed}"])
        draws[seed] = (initial_labeled_set(cfg),
                       draw_candidates(unlabeled, 100, candidate_seed(cfg), cycle=0))
    assert not np.array_equal(draws[0][0], draws[1][0])
    assert not np.array_equal(draws[0][1], draws[1][1])


def test_a_fixed_subset_seed_holds_the_subsets_across_seeds():
    unlabeled = np.arange(1000)
    subsets = [draw_candidates(unlabeled, 100, candidate_seed(
        load_config(None, [f"run.seed={seed}", "al.subset_seed=7"])), cycle=2) for seed in (0, 1)]
    np.testing.assert_array_equal(subsets[0], subsets[1])
