"""The live training-dynamics state of a cycle: on the device, one row per id this rank visits.

Every labeled id is visited exactly once per epoch, and the epoch's split over the ranks
(data.readers.epoch_assignment) is a function of (seed, epoch, world size, batch) that every rank
can compute. So each rank holds, on its device, only the rows of the ids it visits this epoch:

    sum   float32 [L, C]    Σ of recorded softmax vectors
    aux   float64 [L, 4]    count, Σ p_gold, Σ p_gold², number of visits with argmax = gold

where L is the rank's padded share of the epoch. `slot` (a device index, made once an epoch)
maps each visit position to its row; padding positions map to rows that hold zeros. The step at
positions [lo, lo + B) gathers and updates rows slot[lo:lo + B], no host sync:

    target = (sum[s] + p) / (count[s] + 1)          for every row (padding rows hold zeros)
    sum[s] += p, count[s] += 1, ...                  for valid rows only

At the end of the epoch the rows that the next epoch visits on another rank are gathered into a
send buffer in (rank, position) order and moved by one all_to_all_single straight into the next
epoch's storage; the rows that stay are copied after them. Each row is read and written once,
and only rows that change rank cross the interconnect. At the end of the cycle and at
checkpoints the rows are gathered to rank 0, which writes the committed buffers
(buffer.write_buffers) in id order; a resume loads each rank's rows back from such a snapshot
(`load`). Cost model and measurements: docs/td-gathering.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tidal_dist.data.readers import epoch_order, padded_length
from tidal_dist.dynamics.buffer import STATS_COLUMNS, TDBuffer, write_buffers
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write, new_memmap

AUX_COLUMNS = ("count", *STATS_COLUMNS)
# Rows per rank moved by one collective when gathering to rank 0: bounds the temporary memory.
GATHER_BYTES = 64 * 2**20
# td/epochs/probs_eXXXX.npy (train.record_epoch_probs) above this size per cycle is refused: the
# files sit in the run directory, are copied at every commit and read whole by a data-map export.
MAX_EPOCH_PROBS_BYTES = 16 * 2**30


class EpochLayout:
    """Where the labeled rows sit in one epoch: entry k of the padded order belongs to rank
    k % W at position k // W; entry k < n is row order[k] of the sorted ids, k >= n is padding."""

    def __init__(self, n: int, epoch: int, seed: int, world_size: int, batch_size: int) -> None:
        self.n, self.epoch, self.world_size = n, epoch, world_size
        self.order = epoch_order(n, epoch, seed)
        self.per_rank = padded_length(n, world_size, batch_size) // world_size
        self.slot = np.empty(n, dtype=np.int64)  # row -> k
        self.slot[self.order] = np.arange(n)
        self.seed, self.batch_size = seed, batch_size

    def next(self) -> "EpochLayout":
        return EpochLayout(self.n, self.epoch + 1, self.seed, self.world_size, self.batch_size)

    def positions(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions of rank's valid entries, their rows in the sorted ids)."""
        k = np.arange(self.per_rank, dtype=np.int64) * self.world_size + rank
        pos = np.flatnonzero(k < self.n)
        return pos, self.order[k[pos]]


@dataclass
class ExchangePlan:
    """How one rank moves its rows from epoch `old` to epoch `new` (all host arrays)."""

    send_slots: np.ndarray  # storage rows to send, ordered by (destination rank, its position)
    send_counts: list[int]  # rows to each rank (0 to itself)
    keep_slots: np.ndarray  # storage rows that stay here, ordered by their new position
    recv_counts: list[int]  # rows from each rank (0 from itself)
    new_slot: np.ndarray  # next epoch: visit position -> storage row
    new_rows_at: np.ndarray  # next epoch: storage row -> row of the sorted ids (-1: free)


def exchange_plan(old: EpochLayout, new: EpochLayout, rank: int,
                  rows_at: np.ndarray) -> ExchangePlan:
    """The plan for moving every row held here (`rows_at`: storage row -> id row, -1 free) to
    the rank that visits it in `new`. Rows to one rank are sent in the order of their new
    positions and received in that order, so no ids travel. The next storage holds the received
    rows first (by source rank, then position), then the kept rows, then free (zero) rows."""
    w = old.world_size
    held = np.flatnonzero(rows_at >= 0)
    k_new = new.slot[rows_at[held]]
    dest = k_new % w
    order = np.lexsort((k_new // w, dest))
    held, dest = held[order], dest[order]
    away = dest != rank
    send_counts = np.bincount(dest[away], minlength=w).tolist()

    pos, rows = new.positions(rank)
    src = old.slot[rows] % w  # who visits it now: who holds it
    incoming = src != rank
    order = np.lexsort((pos, src, ~incoming))  # received (by source, position), then kept
    pos, rows = pos[order], rows[order]
    new_slot = np.empty(new.per_rank, dtype=np.int64)
    new_slot[pos] = np.arange(len(pos))
    padding = np.setdiff1d(np.arange(new.per_rank), pos, assume_unique=True)
    new_slot[padding] = len(pos) + np.arange(len(padding))  # distinct free rows
    new_rows_at = np.full(new.per_rank, -1, dtype=np.int64)
    new_rows_at[:len(pos)] = rows
    return ExchangePlan(held[away], send_counts, held[~away],
                        np.bincount(src[incoming], minlength=w).tolist(), new_slot, new_rows_at)


def check_epoch_probs_size(n: int, num_classes: int, epochs: int) -> None:
    size = n * num_classes * epochs * 4
    if size > MAX_EPOCH_PROBS_BYTES:
        raise UserError(
            f"config key 'train.record_epoch_probs': {n:,} labeled x {num_classes:,} classes x "
            f"{epochs} epochs of float32 probabilities is {size / 2**30:.1f} GiB per cycle, over "
            f"the {MAX_EPOCH_PROBS_BYTES / 2**30:.0f} GiB limit (the files stay in the run "
            f"directory and are copied at every commit); the data-map statistics in td/stats.npy "
            f"need no per-epoch record: set train.record_epoch_probs=false")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class DeviceTD:
    """One rank's TD rows for the current epoch. Collective methods: advance, save, load,
    write_epoch_probs."""

    def __init__(self, labeled_ids: np.ndarray, num_classes: int, layout: EpochLayout, rank: int,
                 device: torch.device, record_epoch_probs: bool = False) -> None:
        self.ids = np.asarray(labeled_ids, dtype=np.int64)  # ascending
        self.num_classes, self.rank, self.device = num_classes, rank, torch.device(device)
        self.layout = layout
        rows = layout.per_rank
        self.sum = torch.zeros(rows, num_classes, dtype=torch.float32, device=self.device)
        self.aux = torch.zeros(rows, len(AUX_COLUMNS), dtype=torch.float64, device=self.device)
        self.epoch_probs = torch.zeros_like(self.sum) if record_epoch_probs else None
        # Spare storage and a send buffer, allocated once: the exchange never allocates.
        self._spare = {name: torch.zeros_like(t) for name, t in self._tensors().items()}
        self._send = {name: torch.empty_like(t) for name, t in self._tensors().items()}
        self._set_identity_storage()

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"sum": self.sum, "aux": self.aux}
        if self.epoch_probs is not None:
            out["epoch_probs"] = self.epoch_probs
        return out

    def _set_identity_storage(self) -> None:
        """Storage row = visit position (at the start, and after a load)."""
        pos, rows = self.layout.positions(self.rank)
        self.rows_at = np.full(self.layout.per_rank, -1, dtype=np.int64)
        self.rows_at[pos] = rows
        self._set_slot(np.arange(self.layout.per_rank))

    def _set_slot(self, slot: np.ndarray) -> None:
        self.slot = torch.from_numpy(slot).to(self.device)

    # --- inside the step: device gathers, no host sync -----------------------------------------
    def targets(self, lo: int, probs: torch.Tensor) -> torch.Tensor:
        s = self.slot[lo:lo + probs.shape[0]]
        count = self.aux.index_select(0, s)[:, 0:1].to(probs.dtype)
        return (self.sum.index_select(0, s) + probs) / (count + 1.0)

    def record(self, lo: int, probs: torch.Tensor, labels: torch.Tensor,
               valid: torch.Tensor) -> None:
        s = self.slot[lo:lo + probs.shape[0]]  # distinct rows: no two updates collide
        v = valid.to(probs.dtype)
        self.sum.index_add_(0, s, probs * v[:, None])
        labels = torch.where(valid, labels, torch.zeros_like(labels))
        gold = probs.gather(1, labels[:, None]).squeeze(1).double()
        vd = valid.double()
        correct = (probs.argmax(dim=1) == labels).double()
        self.aux.index_add_(0, s, torch.stack([vd, gold * vd, gold * gold * vd, correct * vd], 1))
        if self.epoch_probs is not None:
            self.epoch_probs.index_copy_(0, s, probs * v[:, None])

    # --- at epoch boundaries -----------------------------------------------------------------
    def advance(self) -> None:
        """Move every row to the rank and storage row it has next epoch. The rows that stay are
        copied while the all_to_all is in flight."""
        new = self.layout.next()
        plan = exchange_plan(self.layout, new, self.rank, self.rows_at)
        send = torch.from_numpy(plan.send_slots).to(self.device)
        keep = torch.from_numpy(plan.keep_slots).to(self.device)
        received, kept = sum(plan.recv_counts), len(plan.keep_slots)
        pending = []
        for name, old in self._tensors().items():
            if name == "epoch_probs":
                continue
            out = self._send[name][:len(plan.send_slots)]
            torch.index_select(old, 0, send, out=out)
            if _distributed():
                pending.append(dist.all_to_all_single(
                    self._spare[name][:received], out, output_split_sizes=plan.recv_counts,
                    input_split_sizes=plan.send_counts, async_op=True))
        for name, old in self._tensors().items():
            nxt = self._spare[name]
            if name == "epoch_probs":  # a new epoch's record starts empty
                nxt.zero_()
            else:
                torch.index_select(old, 0, keep, out=nxt[received:received + kept])
                nxt[received + kept:].zero_()  # free rows: what padding positions read
        for work in pending:
            work.wait()
        for name, old in self._tensors().items():
            self._spare[name], nxt = old, self._spare[name]
            setattr(self, name, nxt)
        self.rows_at = plan.new_rows_at
        self._set_slot(plan.new_slot)
        self.layout = new

    def _gathered(self, tensors: dict[str, torch.Tensor],
                  visit: Callable[[str, np.ndarray, np.ndarray], None]) -> None:
        """Rank 0 gets, chunk by chunk, every rank's held rows: visit(name, id_rows, values).
        Collective; every rank has the same number of storage rows."""
        world = self.layout.world_size
        where = torch.from_numpy(self.rows_at).to(self.device)
        if _distributed():
            everyone = [torch.empty_like(where) for _ in range(world)] if self.rank == 0 else None
            dist.gather(where, everyone, dst=0)
        else:
            everyone = [where]
        rows_at = [t.cpu().numpy() for t in everyone] if self.rank == 0 else None
        row_bytes = sum(t.shape[1] * t.element_size() for t in tensors.values())
        chunk = max(1, GATHER_BYTES // max(row_bytes * world, 1))
        per_rank = self.layout.per_rank
        for lo in range(0, per_rank, chunk):
            hi = min(per_rank, lo + chunk)
            for name, t in tensors.items():
                part = t[lo:hi].contiguous()
                if _distributed():
                    parts = [torch.empty_like(part) for _ in range(world)] if self.rank == 0 else None
                    dist.gather(part, parts, dst=0)
                else:
                    parts = [part]
                if self.rank != 0:
                    continue
                for r, values in enumerate(parts):
                    rows = rows_at[r][lo:hi]
                    held = rows >= 0
                    if held.any():
                        visit(name, rows[held], values.cpu().numpy()[held])

    def save(self, folder: Path) -> None:
        """Collective: rank 0 writes ids/sum/count/stats (and, when recording epoch probabilities,
        epoch_probs.npy: the current epoch's visits so far) into `folder`."""
        tensors = self._tensors()
        buffers: dict[str, np.ndarray] = {}

        def visit(name: str, rows: np.ndarray, values: np.ndarray) -> None:
            if name == "aux":
                buffers["count"][rows] = values[:, 0].round().astype(np.int32)
                buffers["stats"][rows] = values[:, 1:]
            else:
                buffers[name][rows] = values

        def fill(arrays: dict[str, np.ndarray]) -> None:
            buffers.update(arrays)
            if self.epoch_probs is not None:
                buffers["epoch_probs"] = new_memmap(Path(folder) / ".epoch_probs.npy.tmp",
                                                    np.float32, (len(self.ids), self.num_classes))
            self._gathered(tensors, visit)
            if "epoch_probs" in buffers:
                buffers.pop("epoch_probs").flush()
                Path(folder, ".epoch_probs.npy.tmp").replace(Path(folder) / "epoch_probs.npy")

        if self.rank == 0:
            write_buffers(folder, self.ids, self.num_classes, fill)
        else:
            self._gathered(tensors, visit)

    def write_epoch_probs(self, path: Path) -> None:
        """Collective: rank 0 writes this epoch's visit probabilities [N, C], aligned with ids."""
        out = {}

        def visit(name: str, rows: np.ndarray, values: np.ndarray) -> None:
            out["probs"][rows] = values

        if self.rank == 0:
            out["probs"] = np.zeros((len(self.ids), self.num_classes), dtype=np.float32)
        self._gathered({"epoch_probs": self.epoch_probs}, visit)
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: np.save(f, out["probs"]))

    def load(self, folder: Path) -> None:
        """Every rank: take its rows of the current layout from a snapshot written by `save`."""
        snap = TDBuffer(folder)
        if not np.array_equal(snap.ids, self.ids):
            raise UserError(f"TD snapshot '{folder}' holds other ids than this cycle's labeled set")
        self._set_identity_storage()
        pos, rows = self.layout.positions(self.rank)
        aux = np.zeros((self.layout.per_rank, len(AUX_COLUMNS)), dtype=np.float64)
        aux[pos, 0] = snap.count[rows]
        aux[pos, 1:] = snap.stats[rows]
        total = np.zeros((self.layout.per_rank, self.num_classes), dtype=np.float32)
        total[pos] = snap.sum[rows]
        self.sum.copy_(torch.from_numpy(total))
        self.aux.copy_(torch.from_numpy(aux))
        if self.epoch_probs is not None and (Path(folder) / "epoch_probs.npy").exists():
            probs = np.zeros_like(total)
            probs[pos] = np.load(Path(folder) / "epoch_probs.npy", mmap_mode="r")[rows]
            self.epoch_probs.copy_(torch.from_numpy(probs))


class NoTD:
    """DeviceTD's interface when the network has no TD module (train.record_td=false under an
    objective that needs none): nothing is recorded, and the committed buffers hold no rows, so
    the cycle's files keep one layout."""

    def __init__(self, num_classes: int, rank: int) -> None:
        self.num_classes, self.rank = num_classes, rank

    def targets(self, lo: int, probs: torch.Tensor) -> None:
        return None

    def record(self, lo: int, probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        pass

    def advance(self) -> None:
        pass

    def write_epoch_probs(self, path: Path) -> None:
        pass

    def save(self, folder: Path) -> None:
        if self.rank == 0:
            write_buffers(folder, np.zeros(0, dtype=np.int64), self.num_classes, lambda arrays: None)

    def load(self, folder: Path) -> None:
        pass
