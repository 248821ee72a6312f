"""Training objectives, one file each: `ce` (cross-entropy alone), `tidal` (CE + the TD module's
KL, reaching the backbone), `lloss` (CE + Learning Loss's ranking loss). `train.objective=auto`
takes the one the query strategy declares (tidal-method.md, "Baselines, as the reference code runs
them"). `nt_xent` is SimCLR's contrastive loss for `tidal-dist pretrain`, not a run objective."""

from __future__ import annotations

from tidal_dist.config import Config
from tidal_dist.job.errors import UserError
from tidal_dist.objectives.base import Objective, StepBatch, register, registry

# Importing the modules registers their objectives.
from tidal_dist.objectives import ce, lloss, tidal  # noqa: E402,F401


def get_objective(name: str) -> Objective:
    table = registry()
    if name not in table:
        raise UserError(f"config key 'train.objective': unknown objective '{name}'; choose one of "
                        f"auto, {', '.join(sorted(table))}")
    return table[name]


def resolve_objective(cfg: Config, strategy_objective: str) -> Objective:
    """The objective in force: train.objective, or the strategy's own when it is 'auto'."""
    name = cfg.train.objective
    return get_objective(strategy_objective if name == "auto" else name)


__all__ = ["Objective", "StepBatch", "get_objective", "register", "registry", "resolve_objective"]
