"""Per-rank part files for a sharded pass, and rank 0's merge.

Each rank appends rows (an id and named fields: scalars or fixed-width vectors) to preallocated
memory-mapped files that carry its rank in their name, so memory stays flat at any pool size and no
collective runs in the loop. After one barrier, rank 0 merges the parts in ascending id order and
checks that the ids are exactly the expected set: scalar fields come back as arrays, vector fields
as memory-mapped files next to the parts (a million 2048-wide embeddings need not fit in RAM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tidal_dist.job.fsutil import new_memmap


@dataclass(frozen=True)
class Field:
    dtype: type
    width: int | None = None  # None: one value per row; else a vector of this width

    def shape(self, rows: int) -> tuple[int, ...]:
        return (rows,) if self.width is None else (rows, self.width)


def part_path(folder: Path, prefix: str, name: str, rank: int) -> Path:
    return folder / f"{prefix}_{name}.rank{rank}.npy"


class PartWriter:
    """One rank's rows: `ids` plus `fields`, preallocated for `capacity` rows (-1 marks unused)."""

    def __init__(self, folder: Path, prefix: str, rank: int, capacity: int,
                 fields: dict[str, Field]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.fields = {"ids": Field(np.int64), **fields}
        self.arrays = {name: new_memmap(part_path(folder, prefix, name, rank), f.dtype,
                                        f.shape(max(capacity, 1)))
                       for name, f in self.fields.items()}
        self.arrays["ids"][:] = -1
        self.n = 0

    def append(self, rows: dict[str, np.ndarray]) -> None:
        k = len(rows["ids"])
        for name in self.fields:
            self.arrays[name][self.n:self.n + k] = rows[name]
        self.n += k

    def close(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.arrays = {}


def merge_parts(folder: Path, prefix: str, world_size: int, expected: np.ndarray,
                fields: dict[str, Field]) -> dict[str, np.ndarray]:
    """Rank 0: every rank's rows in ascending id order; raises unless the ids are exactly
    `expected`, each once (naming missing, doubled and foreign ids)."""
    counts, chunks = [], []
    for r in range(world_size):
        ids = np.load(part_path(folder, prefix, "ids", r), mmap_mode="r")
        n = int(np.count_nonzero(ids >= 0))  # filled rows are a prefix
        counts.append(n)
        chunks.append(np.array(ids[:n]))
    ids = np.concatenate(chunks)
    order = np.argsort(ids, kind="stable")
    merged = {"ids": ids[order]}
    _check_exactly_once(merged["ids"], expected)
    for name, f in fields.items():
        if f.width is None:
            merged[name] = np.concatenate([np.array(np.load(part_path(folder, prefix, name, r),
                                                            mmap_mode="r")[:counts[r]])
                                           for r in range(world_size)])[order]
        else:
            merged[name] = _merge_vectors(folder, prefix, name, counts, order, f)
    return merged


def _merge_vectors(folder: Path, prefix: str, name: str, counts: list[int], order: np.ndarray,
                   f: Field, chunk: int = 65536) -> np.ndarray:
    """Scatter each rank's rows to their place in id order, in chunks (flat memory)."""
    out_path = folder / f"{prefix}_{name}.merged.npy"
    out = new_memmap(out_path, f.dtype, f.shape(len(order)))
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order))  # row i of the concatenation goes to place[i]
    start = 0
    for r, n in enumerate(counts):
        part = np.load(part_path(folder, prefix, name, r), mmap_mode="r")
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            out[place[start + lo:start + hi]] = part[lo:hi]
        start += n
    out.flush()
    del out
    return np.load(out_path, mmap_mode="r")


def _check_exactly_once(got: np.ndarray, expected: np.ndarray) -> None:
    expected = np.sort(np.asarray(expected, dtype=np.int64))
    if np.array_equal(got, expected):
        return
    uniq, counts = np.unique(got, return_counts=True)
    doubled = uniq[counts > 1][:10].tolist()
    missing = np.setdiff1d(expected, got)[:10].tolist()
    extra = np.setdiff1d(got, expected)[:10].tolist()
    raise RuntimeError(f"the pass did not cover its ids exactly once: missing {missing}, "
                       f"doubled {doubled}, not expected {extra} (first 10 of each)")
