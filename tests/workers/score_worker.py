"""Run under torchrun by tests/cycle/test_score.py: score candidates with a freshly seeded model and select.

usage: score_worker.py OUT STRATEGY[,STRATEGY...] N_CANDIDATES [key=value ...]
The network is built for the first STRATEGY (its objective's heads, unless train.objective is
given); each strategy is scored in turn. Ids divisible by 7 play the labeled set. Rank 0 writes
OUT/candidates.npy and per strategy OUT/NAME/merged.npz (the scalar fields) and
OUT/NAME/selected.npy (the picked ids, in pick order).
"""

import sys
from pathlib import Path

import numpy as np

from tidal_dist.config import candidate_seed, load_config
from tidal_dist.cycle.loop import select
from tidal_dist.cycle.score import draw_candidates, logged_scores, save_scores, score_labeled, score_pool
from tidal_dist.data.manifest import load_manifest
from tidal_dist.strategies import ScoreContext, get_strategy
from tidal_dist.training.session import build_session


def main() -> None:
    out, names, n = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
    cfg = load_config(None, [f"al.strategy={names[0]}", *sys.argv[4:]])
    session = build_session(cfg)
    acc = session.accelerator
    pool = load_manifest(cfg.data.root).split("pool").ids()
    labeled, unlabeled = pool[pool % 7 == 0], pool[pool % 7 != 0]  # candidates are not a range
    candidates = draw_candidates(unlabeled, n, candidate_seed(cfg), cycle=0)
    ctx = ScoreContext(cycle_seed=11, al=cfg.al)
    logged = logged_scores(acc.unwrap_model(session.model))
    for name in names:
        strategy = get_strategy(name)
        merged = score_pool(session, candidates, strategy, out / name / "parts", ctx, logged)
        labeled_kept, _ = score_labeled(session, labeled, out / name / "parts",
                                        strategy.keeps_labeled, None)
        if merged is not None:
            save_scores(out / name / "merged.npz", merged)
            queried = select(strategy, merged, labeled_kept, cfg.al.budget, ctx, acc.device)
            np.save(out / name / "selected.npy", queried["ids"])
    if acc.is_main_process:
        np.save(out / "candidates.npy", candidates)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
