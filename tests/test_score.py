"""Sharded scoring: exactly once for 1, 2, 3 ranks; world-size invariant scores and selections."""

import numpy as np
import pytest

from tests.mp import tail, torchrun
from tidal_dist.score import draw_candidates, merge_parts

WORKER = "tests/workers/score_worker.py"
N_CANDIDATES = 131  # divides neither 2 nor 3 ranks, nor the 37-sample shards


@pytest.fixture(scope="module")
def scored(synthetic_dataset, tmp_path_factory):
    runs = {}
    for world in (1, 2, 3):
        out = tmp_path_factory.mktemp(f"score{world}")
        args = [f"data.root={synthetic_dataset}", "data.num_workers=2", "model.backbone=small_cnn",
                "model.width=4", "al.score_batch_size=16", "al.budget=17", "run.seed=3"]
        proc = torchrun(world, [WORKER, str(out), "tidal_entropy", str(N_CANDIDATES), *args])
        assert proc.returncode == 0, tail(proc)
        runs[world] = out
    return runs


def test_every_candidate_scored_exactly_once(scored):
    for world, out in scored.items():
        merged = np.load(out / "merged.npz")
        candidates = np.load(out / "candidates.npy")
        assert len(candidates) == N_CANDIDATES
        np.testing.assert_array_equal(merged["ids"], np.sort(candidates))  # merge_parts checks too
        assert len(np.unique(merged["ids"])) == N_CANDIDATES
        parts = sorted(p.name for p in (out / "parts").iterdir())
        assert parts == sorted(f"score_{f}.rank{r}.npy" for r in range(world)
                               for f in ("ids", "uncertainty", "reported"))


def test_scores_and_selection_do_not_depend_on_world_size(scored):
    ref = np.load(scored[1] / "merged.npz")
    for world in (2, 3):
        got = np.load(scored[world] / "merged.npz")
        np.testing.assert_allclose(got["uncertainty"], ref["uncertainty"], rtol=1e-5, atol=1e-7)
    selections = {w: np.load(out / "selected.npy") for w, out in scored.items()}
    assert len(selections[1]) == 17
    for world in (2, 3):
        np.testing.assert_array_equal(selections[world], selections[1])


def test_merge_names_missing_and_doubled_ids(tmp_path):
    for r, ids in enumerate([np.array([0, 1, 2, -1]), np.array([2, 4, -1, -1])]):
        np.save(tmp_path / f"score_ids.rank{r}.npy", ids)
        np.save(tmp_path / f"score_uncertainty.rank{r}.npy", np.zeros(4))
        np.save(tmp_path / f"score_reported.rank{r}.npy", np.zeros(4))
    with pytest.raises(RuntimeError, match=r"missing \[3\], doubled \[2\]"):
        merge_parts(tmp_path, 2, np.arange(5))


def test_candidates_are_seeded_apart_from_training():
    unlabeled = np.arange(1000)
    a = draw_candidates(unlabeled, 100, subset_seed=1, cycle=0)
    assert len(a) == 100 and len(np.unique(a)) == 100
    np.testing.assert_array_equal(a, draw_candidates(unlabeled, 100, subset_seed=1, cycle=0))
    assert not np.array_equal(a, draw_candidates(unlabeled, 100, subset_seed=2, cycle=0))
    assert not np.array_equal(a, draw_candidates(unlabeled, 100, subset_seed=1, cycle=1))
    np.testing.assert_array_equal(draw_candidates(unlabeled[::-1], "all", 1, 0), unlabeled)
