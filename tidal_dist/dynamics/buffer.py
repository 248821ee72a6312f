"""Training-dynamics (TD) buffers: one row per labeled id, memory-mapped in the run directory.

TiDAL's target for sample x after t visits is the running mean of its softmax over visits,
p̄_t(x) = (1/t) Σ_e p_e(x) (Kye et al., ICCV 2023, eq. 2). The reference code keeps the mean and
updates it as (p̄·e + p)/(e+1) at epoch e; we keep a float32 `sum` and an int32 `count` instead,
which gives the same value when every sample is visited once per epoch and stays right when it
is not: target = (sum + p) / (count + 1).

Files, in one folder per cycle (`td/`), the committed state:
    ids.npy        int64 [N]         the labeled ids, ascending: row r belongs to ids[r]
    sum.npy        float32 [N, C]    Σ of recorded softmax vectors
    count.npy      int32 [N]         number of recorded visits
    stats.npy      float64 [N, 3]    data-map statistics (Swayamdipta et al., EMNLP 2020,
                                     "Dataset Cartography"): Σ p_gold, Σ p_gold², number of
                                     visits whose argmax was the gold label (STATS_COLUMNS)

During training the live state is on the device, one row per visit position of the epoch
(state.py); rank 0 writes these files at the end of the cycle and at checkpoints. See
docs/td-gathering.md (and benchmarks/td_gather.py for the earlier file-based gather it replaced).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import new_memmap

_FILES = ("ids.npy", "sum.npy", "count.npy", "stats.npy")
STATS_COLUMNS = ("sum_gold", "sum_gold_sq", "correct")


def _open(path: Path, mode: str) -> np.ndarray:
    return np.load(path, mmap_mode=mode)


class TDBuffer:
    """sum/count memmaps for one cycle's labeled ids. Open once per process."""

    def __init__(self, folder: str | os.PathLike, writable: bool = False):
        self.folder = Path(folder)
        missing = [f for f in _FILES if not (self.folder / f).exists()]
        if missing:
            raise UserError(f"TD buffer folder '{self.folder}' lacks {', '.join(missing)}")
        mode = "r+" if writable else "r"
        self.ids = np.load(self.folder / "ids.npy")
        self.sum = _open(self.folder / "sum.npy", mode)
        self.count = _open(self.folder / "count.npy", mode)
        self.stats = _open(self.folder / "stats.npy", mode)
        self.writable = writable

    @property
    def num_classes(self) -> int:
        return self.sum.shape[1]

    @staticmethod
    def create(folder: str | os.PathLike, ids: np.ndarray, num_classes: int) -> "TDBuffer":
        """Rank 0 only: zeroed buffers for `ids`."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        write_buffers(folder, ids, num_classes, lambda arrays: None)
        return TDBuffer(folder, writable=True)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row index of each id; an id that is not in the buffer is an error, not a silent miss."""
        return rows_of(self.ids, ids, "this cycle's labeled set")

    def flush(self) -> None:
        self.sum.flush()
        self.count.flush()
        self.stats.flush()

    def mean(self) -> np.ndarray:
        """p̄ for every row (zeros for a row never visited)."""
        count = np.maximum(np.asarray(self.count), 1)[:, None]
        return np.asarray(self.sum) / count


def rows_of(sorted_ids: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Row of each of `ids` in the ascending `sorted_ids`; KeyError naming `what` for a miss."""
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.searchsorted(sorted_ids, ids)
    bad = (rows >= len(sorted_ids)) | (sorted_ids[np.minimum(rows, len(sorted_ids) - 1)] != ids)
    if bad.any():
        raise KeyError(f"ids not in {what}: {ids[bad][:10].tolist()}")
    return rows


def write_buffers(folder: str | os.PathLike, ids: np.ndarray, num_classes: int,
                  fill: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Rank 0: write ids/sum/count/stats for `ids` (ascending, unique), `fill` setting the values
    of the zeroed memmaps {"sum", "count", "stats"} (rows aligned with the sorted ids). Written
    under temporary names and renamed, ids.npy last: a folder with ids.npy is complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        raise ValueError("TD buffer ids must be ascending and unique")
    specs = {"sum": ((len(ids), num_classes), np.float32), "count": ((len(ids),), np.int32),
             "stats": ((len(ids), len(STATS_COLUMNS)), np.float64)}
    arrays = {name: new_memmap(folder / f".{name}.npy.tmp", dtype, shape)
              for name, (shape, dtype) in specs.items()}
    fill(arrays)
    for name, arr in arrays.items():
        arr.flush()
        del arr
    arrays.clear()
    for name in specs:
        os.replace(folder / f".{name}.npy.tmp", folder / f"{name}.npy")
    np.save(folder / ".ids.tmp.npy", ids)
    os.replace(folder / ".ids.tmp.npy", folder / "ids.npy")
