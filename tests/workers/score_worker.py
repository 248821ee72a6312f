"""Run under torchrun by tests/test_score.py: score candidates with a freshly seeded model.

usage: score_worker.py OUT STRATEGY N_CANDIDATES [key=value ...]
Rank 0 writes OUT/merged.npz (ids, uncertainty, reported) and OUT/selected.npy (top al.budget).
"""

import sys
from pathlib import Path

import numpy as np

from tidal_dist.config import candidate_seed, load_config
from tidal_dist.data.manifest import load_manifest
from tidal_dist.score import draw_candidates, save_scores, score_pool
from tidal_dist.selection import top_k
from tidal_dist.strategies import get_strategy
from tidal_dist.train import build_session


def main() -> None:
    out, strategy, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    cfg = load_config(None, sys.argv[4:])
    session = build_session(cfg)
    pool = load_manifest(cfg.data.root).split("pool").ids()
    unlabeled = pool[pool % 7 != 0]  # some ids are "labeled": candidates are not a range
    candidates = draw_candidates(unlabeled, n, candidate_seed(cfg), cycle=0)
    merged = score_pool(session, candidates, get_strategy(strategy), out / "parts", cycle_seed=11)
    if merged is not None:
        save_scores(out / "merged.npz", merged)
        picked = top_k(merged["ids"], merged["uncertainty"], cfg.al.budget)
        np.save(out / "selected.npy", merged["ids"][picked])
        np.save(out / "candidates.npy", candidates)
    session.accelerator.wait_for_everyone()
    session.accelerator.end_training()


if __name__ == "__main__":
    main()
