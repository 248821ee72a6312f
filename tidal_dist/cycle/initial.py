"""Cycle 0's labeled set: chosen without labels (al.initial_strategy), and with a person as the
oracle, labeled by that person before any training.

    random      the seeded draw of al.initial pool ids (cycle/pool.py), today's behaviour
    typiclust   TypiClust (Hacohen et al., ICML 2022) on the embeddings of the freshly built,
                pretrained backbone (model.weights): al.subset_size candidates scored like any
                cycle's (cycle/score.py, sharded over the ranks), k-means and typicality on rank 0

A chosen set other than the simulated random draw is kept in RUN_DIR/initial.npz (ids, score),
written once by rank 0, so every later invocation, any rank and any world size, trains on the
same ids. With a human oracle the set is then exported as queries/initial.csv (+ images,
cycle/queries.py) or pushed to Label Studio, and the run waits (exit 3) until the labels come
back: the shards' labels are never read on that path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tidal_dist.config import candidate_seed
from tidal_dist.cycle.oracle import HUMAN_ORACLES, INITIAL
from tidal_dist.cycle.pool import initial_labeled_set, pool_ids
from tidal_dist.cycle.score import draw_candidates, score_pool
from tidal_dist.job.fsutil import atomic_write
from tidal_dist.strategies import ScoreContext, SelectionInputs, get_strategy

INITIAL_SET_NAME = "initial.npz"
INITIAL_DRAW = 2**31 - 1  # the candidate draw's "cycle": apart from every real cycle's


def initial_set_path(run_dir: Path) -> Path:
    return run_dir / INITIAL_SET_NAME


def kept_initial_set(cfg) -> bool:
    """Whether cycle 0's set is chosen once and kept in initial.npz (anything but the simulated
    random draw, which stays a pure function of the config)."""
    return cfg.al.initial_strategy != "random" or cfg.al.oracle in HUMAN_ORACLES


def choose_initial_set(session, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, each one's score) of cycle 0's set; collective under typiclust (every rank
    calls it). Reads initial.npz when an earlier invocation chose it."""
    cfg, acc = session.cfg, session.accelerator
    if not kept_initial_set(cfg):
        ids = initial_labeled_set(cfg)
        return ids, np.zeros(len(ids))
    path = initial_set_path(run_dir)
    if not path.exists():
        if cfg.al.initial_strategy == "typiclust":
            ids, scores = _typiclust(session, run_dir)
        else:
            ids = initial_labeled_set(cfg)
            scores = np.zeros(len(ids))
        if acc.is_main_process:
            order = np.argsort(ids)
            atomic_write(path, lambda f: np.savez(f, ids=ids[order], score=scores[order]))
        acc.wait_for_everyone()
    with np.load(path) as z:
        return z["ids"], z["score"]


def _typiclust(session, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    cfg, acc = session.cfg, session.accelerator
    ids, reserved = pool_ids(cfg)
    seed = candidate_seed(cfg)
    need = cfg.al.initial - len(reserved)
    candidates = draw_candidates(np.setdiff1d(ids, reserved, assume_unique=True),
                                 cfg.al.subset_size, seed, INITIAL_DRAW)
    strategy = get_strategy("typiclust")
    ctx = ScoreContext(cycle_seed=seed * 1_000_003 + INITIAL_DRAW, al=cfg.al)
    work = run_dir / "work" / INITIAL
    merged = score_pool(session, candidates, strategy, work / "scores", ctx)
    if not acc.is_main_process:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    choice = strategy.select(SelectionInputs(
        ids=merged["ids"], uncertainty=merged["uncertainty"], kept={"embedding": merged["embedding"]},
        labeled={}, k=min(need, len(candidates)), seed=ctx.cycle_seed, device=acc.device,
        al=cfg.al))
    picked = merged["ids"][np.asarray(choice.indices, dtype=np.int64)]
    del merged
    shutil.rmtree(work, ignore_errors=True)
    return (np.concatenate([reserved, picked]).astype(np.int64),
            np.concatenate([np.zeros(len(reserved)), choice.reported]))
