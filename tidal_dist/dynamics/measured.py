"""Measured training dynamics of the cycle's candidates (Bengar et al., "When Deep Learners Change
Their Mind: Learning Dynamics for Active Learning", CAIP 2021): while the model trains, every
al.td_measure_every epochs each candidate is evaluated and its softmax recorded, so a strategy
can score the candidates' running-mean prediction instead of TiDAL's predicted one.

State, one row per candidate (ids ascending), on the device and the same on every rank:
    sum     float64 [N, C]   Σ over measurements of softmax(f(x))
    votes   int32   [N, C]   how many measurements predicted each class (label dispersion)
    count   int32   [N]      number of measurements
A measurement pass adds each rank's own share into a zeroed delta, then one all-reduce (SUM) adds
every rank's delta: the rows are disjoint, so the sum is exact and the counts are integers on any
world size. Snapshots (checkpoints, the trained cycle) are three .npy files and ids.npy written by
rank 0, ids last, under temporary names: a folder with ids.npy is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tidal_dist.dynamics.buffer import rows_of
from tidal_dist.job.errors import UserError

FILES = ("sum.npy", "votes.npy", "count.npy")


class MeasuredTD:
    def __init__(self, ids: np.ndarray, num_classes: int, device: torch.device):
        self.ids = np.sort(np.asarray(ids, dtype=np.int64))
        self.device = device
        n = len(self.ids)
        self.sum = torch.zeros(n, num_classes, dtype=torch.float64, device=device)
        self.votes = torch.zeros(n, num_classes, dtype=torch.int32, device=device)
        self.count = torch.zeros(n, dtype=torch.int32, device=device)
        self._delta: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return rows_of(self.ids, ids, "this cycle's candidates")

    def begin(self) -> None:
        """Start a measurement: this rank's additions go to a zeroed delta."""
        self._delta = (torch.zeros_like(self.sum), torch.zeros_like(self.votes),
                       torch.zeros_like(self.count))

    def add(self, ids: np.ndarray, probs: torch.Tensor) -> None:
        rows = torch.from_numpy(self.rows(ids)).to(self.device)
        d_sum, d_votes, d_count = self._delta
        d_sum.index_add_(0, rows, probs.double())
        d_votes[rows, probs.argmax(dim=1)] += 1
        d_count.index_add_(0, rows, torch.ones(len(rows), dtype=torch.int32, device=self.device))

    def finish(self, reduce) -> None:
        """Collective: add every rank's delta (`reduce`: a SUM all-reduce over ranks). Every
        candidate must have been measured exactly once over the ranks."""
        d_sum, d_votes, d_count = (reduce(t) for t in self._delta)
        self._delta = None
        if not bool((d_count == 1).all()):
            seen = int(d_count.sum())
            raise RuntimeError(f"a candidate-TD measurement saw {seen} rows for {len(self.ids)} "
                               f"candidates: the sharding lost or repeated candidates")
        self.sum += d_sum
        self.votes += d_votes
        self.count += d_count

    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1)[:, None].double()

    def save(self, folder: Path, is_main: bool) -> None:
        if not is_main:
            return
        write_measured(folder, self.ids, {"sum": self.sum.cpu().numpy(),
                                          "votes": self.votes.cpu().numpy(),
                                          "count": self.count.cpu().numpy()})

    def load(self, folder: Path) -> None:
        snap = load_measured(folder)
        if not np.array_equal(snap["ids"], self.ids):
            raise UserError(f"candidate-TD snapshot '{folder}' holds other ids than this cycle's "
                            f"candidates")
        self.sum.copy_(torch.from_numpy(np.asarray(snap["sum"])))
        self.votes.copy_(torch.from_numpy(np.asarray(snap["votes"])))
        self.count.copy_(torch.from_numpy(np.asarray(snap["count"])))


def write_measured(folder: Path, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        np.save(folder / f".{name}.tmp.npy", value)
        os.replace(folder / f".{name}.tmp.npy", folder / f"{name}.npy")
    np.save(folder / ".ids.tmp.npy", np.asarray(ids, dtype=np.int64))
    os.replace(folder / ".ids.tmp.npy", folder / "ids.npy")


def load_measured(folder: Path) -> dict[str, np.ndarray]:
    """ids, sum, votes, count of a snapshot (memory-mapped)."""
    folder = Path(folder)
    missing = [f for f in ("ids.npy", *FILES) if not (folder / f).exists()]
    if missing:
        raise UserError(f"candidate-TD folder '{folder}' lacks {', '.join(missing)}")
    out = {"ids": np.load(folder / "ids.npy")}
    for f in FILES:
        out[f[:-4]] = np.load(folder / f, mmap_mode="r")
    return out
