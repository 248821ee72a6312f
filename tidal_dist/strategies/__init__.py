"""Query strategies: each one turns a batch of model outputs into per-sample uncertainty.

Convention: HIGHER score = MORE uncertain = picked first (selection.top_k). A strategy that is
naturally "lower is more uncertain" (TiDAL-M's margin) stores the value it reports and negates
inside `uncertainty`. Adding a strategy = one file here that calls `register`.
"""

from __future__ import annotations

from tidal_dist.errors import UserError
from tidal_dist.strategies.base import Strategy, register, registry

# Importing the modules registers their strategies.
from tidal_dist.strategies import entropy, random_sampling, tidal  # noqa: E402,F401


def get_strategy(name: str) -> Strategy:
    table = registry()
    if name not in table:
        raise UserError(f"config key 'al.strategy': unknown strategy '{name}'; "
                        f"choose one of {', '.join(sorted(table))}")
    return table[name]


__all__ = ["Strategy", "get_strategy", "register", "registry"]
