"""Counter-based random numbers: each value a pure function of (key, seed), so a draw does not depend
on which process makes it, in which order, or in what batch (world-size-invariant randomness for
Random sampling and BALD's dropout masks)."""

from __future__ import annotations

import numpy as np


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014.
    uint64 arithmetic wraps modulo 2**64, as the generator requires."""
    with np.errstate(over="ignore"):
        x = np.asarray(x).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def to_unit(bits: np.ndarray) -> np.ndarray:
    """uint64 -> float64 in [0, 1), from the top 53 bits."""
    return (bits >> np.uint64(11)).astype(np.float64) / 2.0**53


def uniform_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """A float64 in [0, 1) per key."""
    mixed = np.asarray(keys).astype(np.uint64) ^ splitmix64(np.array([seed]))
    return to_unit(splitmix64(mixed))
