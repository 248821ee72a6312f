"""Random sampling as a score: a seeded hash of (id, cycle seed), so the pick is the same for any
world size, loader layout or batch order (a per-process RNG would not be)."""

from __future__ import annotations

import numpy as np
import torch

from tidal_dist.strategies.base import Outputs, Strategy, register


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014.
    uint64 arithmetic wraps modulo 2**64, as the generator requires."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@register
class RandomSampling(Strategy):
    name = "random"

    def uncertainty(self, out: Outputs, cycle_seed: int) -> torch.Tensor:
        keys = out.ids.cpu().numpy().astype(np.uint64) ^ splitmix64(np.array([cycle_seed]))
        return torch.from_numpy((splitmix64(keys) >> np.uint64(11)).astype(np.float64) / 2.0**53)
