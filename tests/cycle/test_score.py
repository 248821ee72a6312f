"""Sharded scoring: exactly once for 1, 2, 3 ranks; world-size invariant scores and selections, for
every strategy."""

import numpy as np
import pytest

from tests.mp import tail, torchrun
from tidal_dist.cycle.parts import Field, merge_parts
from tidal_dist.cycle.score import draw_candidates

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
        merged = np.load(out / "tidal_entropy" / "merged.npz")
        candidates = np.load(out / "candidates.npy")
        assert len(candidates) == N_CANDIDATES
        np.testing.assert_array_equal(merged["ids"], np.sort(candidates))  # merge_parts checks too
        assert len(np.unique(merged["ids"])) == N_CANDIDATES
        parts = sorted(p.name for p in (out / "tidal_entropy" / "parts").glob("score_*"))
        fields = ("ids", "uncertainty", "reported", "predicted", "score_entropy",
                  "score_least_confidence", "score_margin", "score_tidal_entropy",
                  "score_tidal_margin")
        assert parts == sorted(f"score_{f}.rank{r}.npy" for r in range(world) for f in fields)


def test_scores_and_selection_do_not_depend_on_world_size(scored):
    ref = np.load(scored[1] / "tidal_entropy" / "merged.npz")
    for world in (2, 3):
        got = np.load(scored[world] / "tidal_entropy" / "merged.npz")
        np.testing.assert_allclose(got["uncertainty"], ref["uncertainty"], rtol=1e-5, atol=1e-7)
    selections = {w: np.load(out / "tidal_entropy" / "selected.npy") for w, out in scored.items()}
    assert len(selections[1]) == 17
    for world in (2, 3):
        np.testing.assert_array_equal(selections[world], selections[1])


ALL = ["random", "entropy", "margin", "least_confidence", "bald", "lloss", "tidal_entropy",
       "tidal_margin", "coreset", "badge", "tidal_cluster"]


@pytest.fixture(scope="module")
def every_strategy(synthetic_dataset, tmp_path_factory):
    """Each strategy scored and selected by 1 and 2 processes with the same (fresh) weights; the
    Learning Loss objective builds a network with every head, so one job scores them all."""
    runs = {}
    for world in (1, 2):
        out = tmp_path_factory.mktemp(f"every{world}")
        args = [f"data.root={synthetic_dataset}", "data.num_workers=1", "model.backbone=small_cnn",
                "model.width=4", "al.score_batch_size=16", "al.budget=9", "al.cluster_factor=3",
                "run.seed=3", "train.objective=lloss", "train.batch_size=16"]
        proc = torchrun(world, [WORKER, str(out), ",".join(ALL), "70", *args])
        assert proc.returncode == 0, tail(proc)
        runs[world] = out
    return runs


def test_every_strategy_selects_the_same_ids_on_1_and_2_processes(every_strategy):
    for name in ALL:
        one = np.load(every_strategy[1] / name / "selected.npy")
        two = np.load(every_strategy[2] / name / "selected.npy")
        assert len(one) == 9 and len(np.unique(one)) == 9, name
        np.testing.assert_array_equal(np.sort(one), np.sort(two), err_msg=name)
        np.testing.assert_array_equal(one, two, err_msg=name)  # the same pick order too
    random_pick = np.load(every_strategy[1] / "random" / "selected.npy")
    assert not np.array_equal(np.sort(random_pick),
                              np.sort(np.load(every_strategy[1] / "coreset" / "selected.npy")))


def test_merge_names_missing_and_doubled_ids(tmp_path):
    for r, ids in enumerate([np.array([0, 1, 2, -1]), np.array([2, 4, -1, -1])]):
        np.save(tmp_path / f"score_ids.rank{r}.npy", ids)
        np.save(tmp_path / f"score_uncertainty.rank{r}.npy", np.zeros(4))
    with pytest.raises(RuntimeError, match=r"missing \[3\], doubled \[2\]"):
        merge_parts(tmp_path, "score", 2, np.arange(5), {"uncertainty": Field(np.float64)})


def test_candidates_are_seeded_apart_from_training():
    unlabeled = np.arange(1000)
    a = draw_candidates(unlabeled, 100, subset_seed=1, cycle=0)
    assert len(a) == 100 and len(np.unique(a)) == 100
    np.testing.assert_array_equal(a, draw_candidates(unlabeled, 100, subset_seed=1, cycle=0))
    assert not np.array_equal(a, draw_candidates(unlabeled, 100, subset_seed=2, cycle=0))
    assert not np.array_equal(a, draw_candidates(unlabeled, 100, subset_seed=1, cycle=1))
    np.testing.assert_array_equal(draw_candidates(unlabeled[::-1], "all", 1, 0), unlabeled)


def test_parts_merge_to_files_read_in_blocks(tmp_path):
    """Rows appended out of order on two ranks come back in id order, whether the scalar fields
    are merged in memory or to files; read_rows gives any block of those files."""
    from tidal_dist.cycle.parts import PartWriter, read_rows

    fields = {"p": Field(np.float32), "v": Field(np.float32, width=3)}
    shares = [np.array([5, 0, 3]), np.array([4, 1, 2, 6])]
    for rank, ids in enumerate(shares):
        writer = PartWriter(tmp_path, "t", rank, 5, fields)
        for batch in np.array_split(ids, 2):
            writer.append({"ids": batch, "p": batch / 10,
                           "v": np.repeat(batch[:, None], 3, axis=1)})
        writer.close()
    in_memory = merge_parts(tmp_path, "t", 2, np.arange(7), fields)
    on_disk = merge_parts(tmp_path, "t", 2, np.arange(7), fields, scalars_on_disk=True)
    np.testing.assert_array_equal(in_memory["ids"], np.arange(7))
    np.testing.assert_allclose(in_memory["p"], np.arange(7) / 10)
    np.testing.assert_allclose(read_rows(on_disk["p"].filename, 2, 5), [0.2, 0.3, 0.4])
    np.testing.assert_array_equal(read_rows(on_disk["v"].filename, 5, 7), [[5] * 3, [6] * 3])
