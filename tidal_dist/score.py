"""Sharded scoring of the candidate pool.

Each rank streams its own share of the candidates (inference.predict: rank x loader worker,
exactly once), runs backbone + TD module in eval mode with no augmentation, and appends
(id, uncertainty, reported value) to memory-mapped part files that carry its rank in their name.
No collective runs inside the loop, so ranks may see different numbers of batches. One barrier;
rank 0 merges the parts and checks that the merged ids are exactly the candidate set.

Memory stays flat as the pool grows: parts are preallocated memmaps, written batch by batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tidal_dist import preemption
from tidal_dist.fsutil import atomic_write, new_memmap
from tidal_dist.inference import predict
from tidal_dist.strategies.base import Outputs, Strategy

PART_DTYPES = {"ids": np.int64, "uncertainty": np.float64, "reported": np.float64}
PART_FIELDS = tuple(PART_DTYPES)


def draw_candidates(unlabeled: np.ndarray, subset_size: int | str, subset_seed: int,
                    cycle: int) -> np.ndarray:
    """The cycle's candidates: a seeded random subset of the unlabeled pool, or all of it.
    Seeded by (al.subset_seed, cycle), apart from the training seed (tidal-method.md step 4)."""
    unlabeled = np.sort(np.asarray(unlabeled, dtype=np.int64))
    if subset_size == "all" or subset_size >= len(unlabeled):
        return unlabeled
    rng = np.random.default_rng([subset_seed, cycle])
    return np.sort(rng.choice(unlabeled, size=int(subset_size), replace=False))


def _part_path(folder: Path, name: str, rank: int) -> Path:
    return folder / f"score_{name}.rank{rank}.npy"


def score_pool(session, candidates: np.ndarray, strategy: Strategy, out_dir: Path,
               cycle_seed: int) -> dict[str, np.ndarray] | None:
    """Score `candidates` on every rank; rank 0 returns the merged {ids, uncertainty, reported}
    sorted by id (other ranks return None). Raises if the merged ids are not the candidate set."""
    cfg, acc = session.cfg, session.accelerator
    rank, world = acc.process_index, acc.num_processes
    out_dir.mkdir(parents=True, exist_ok=True)
    # Upper bound of this rank's share: contiguous chunks of ceil(N / (W*K)) per loader worker.
    workers = max(cfg.data.num_workers, 1)
    capacity = max(1, math.ceil(len(candidates) / (world * workers)) * workers)
    parts = {name: new_memmap(_part_path(out_dir, name, rank), PART_DTYPES[name], (capacity,))
             for name in PART_FIELDS}
    parts["ids"][:] = -1
    n = 0
    bar = tqdm(total=len(candidates), desc="scoring", disable=not acc.is_main_process,
               leave=False, dynamic_ncols=True)
    for ids, _labels, logits, td_logits in predict(session, "pool", cfg.al.score_batch_size,
                                                   ids=candidates):
        u = strategy.uncertainty(Outputs(ids=ids, logits=logits, td_logits=td_logits), cycle_seed)
        k = len(ids)
        parts["ids"][n:n + k] = ids.numpy()
        parts["uncertainty"][n:n + k] = u.cpu().numpy()
        parts["reported"][n:n + k] = strategy.reported(u).cpu().numpy()
        n += k
        bar.update(k * world)  # an estimate of global progress, from rank 0's share
    bar.close()
    for arr in parts.values():
        arr.flush()
    del parts
    # A stop request ends the loop early on the rank that got it; scoring restarts on resume.
    preemption.raise_if_agreed(acc.device, "scoring")
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    return merge_parts(out_dir, world, candidates)


def merge_parts(folder: Path, world_size: int, candidates: np.ndarray) -> dict[str, np.ndarray]:
    """Concatenate the ranks' parts, sort by id, and check: every candidate exactly once."""
    chunks = {name: [] for name in PART_FIELDS}
    for r in range(world_size):
        ids = np.load(_part_path(folder, "ids", r), mmap_mode="r")
        n = int(np.count_nonzero(ids >= 0))  # filled rows are a prefix
        for name in PART_FIELDS:
            chunks[name].append(np.array(np.load(_part_path(folder, name, r), mmap_mode="r")[:n]))
    merged = {name: np.concatenate(chunks[name]) for name in PART_FIELDS}
    order = np.argsort(merged["ids"], kind="stable")
    merged = {name: arr[order] for name, arr in merged.items()}
    expected = np.sort(np.asarray(candidates, dtype=np.int64))
    if not np.array_equal(merged["ids"], expected):
        got = merged["ids"]
        uniq, counts = np.unique(got, return_counts=True)
        doubled = uniq[counts > 1][:10].tolist()
        missing = np.setdiff1d(expected, got)[:10].tolist()
        extra = np.setdiff1d(got, expected)[:10].tolist()
        raise RuntimeError(f"scoring did not cover the candidates exactly once: missing {missing}, "
                           f"doubled {doubled}, not candidates {extra} (first 10 of each)")
    return merged


def save_scores(path: Path, merged: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **{k: merged[k] for k in PART_FIELDS}))
