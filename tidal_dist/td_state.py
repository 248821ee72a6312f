"""The live training-dynamics state of a cycle: on the device, one row per visit position.

Every labeled id is visited exactly once per epoch, and the epoch's split over the ranks
(data.readers.epoch_assignment) is a function of (seed, epoch, world size, batch) that every rank
can compute. So each rank holds, on its device, only the rows of the ids it visits this epoch, in
visit order:

    sum   float32 [L, C]    Σ of recorded softmax vectors
    aux   float64 [L, 4]    count, Σ p_gold, Σ p_gold², number of visits with argmax = gold

where L is the rank's padded share of the epoch. The step at positions [lo, lo + B) reads and
updates rows [lo, lo + B): a slice, no index lookup, no host sync:

    target = (sum[j] + p) / (count[j] + 1)          for every row (padding rows hold zeros)
    sum[j] += p, count[j] += 1, ...                  for valid rows only

At the end of the epoch one all_to_all_single hands every valid row to the rank that visits it
next epoch, at its new position (`advance`). At the end of the cycle and at checkpoints the rows
are gathered to rank 0, which writes the committed buffers (td_buffer.write_buffers) in id order;
a resume loads each rank's rows back from such a snapshot (`load`). Cost model and measurements:
docs/td-gathering.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tidal_dist.data.readers import epoch_order, padded_length
from tidal_dist.errors import UserError
from tidal_dist.fsutil import atomic_write
from tidal_dist.td_buffer import STATS_COLUMNS, TDBuffer, write_buffers

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


def exchange_plan(old: EpochLayout, new: EpochLayout, rank: int) -> tuple[np.ndarray, list[int],
                                                                          np.ndarray, list[int]]:
    """(send positions, send counts per rank, receive positions, receive counts per rank) for
    moving every valid row from its place in `old` to its place in `new`. Rows to one rank are
    sent in the order of their new positions; rows from one rank are received in the order of
    the receiver's positions: the two orders agree, so no ids travel."""
    w = old.world_size
    pos, rows = old.positions(rank)
    k_new = new.slot[rows]
    dest = k_new % w
    send = pos[np.lexsort((k_new // w, dest))]
    mine, my_rows = new.positions(rank)
    src = old.slot[my_rows] % w
    recv = mine[np.argsort(src, kind="stable")]
    return (send, np.bincount(dest, minlength=w).tolist(), recv,
            np.bincount(src, minlength=w).tolist())


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
    """One rank's TD rows for the current epoch. Collective methods: advance, save, load."""

    def __init__(self, labeled_ids: np.ndarray, num_classes: int, layout: EpochLayout, rank: int,
                 device: torch.device, record_epoch_probs: bool = False) -> None:
        self.ids = np.asarray(labeled_ids, dtype=np.int64)  # ascending
        self.num_classes, self.rank, self.device = num_classes, rank, torch.device(device)
        self.layout = layout
        rows = layout.per_rank
        self.sum = torch.zeros(rows, num_classes, dtype=torch.float32, device=self.device)
        self.aux = torch.zeros(rows, len(AUX_COLUMNS), dtype=torch.float64, device=self.device)
        self.epoch_probs = (torch.zeros_like(self.sum) if record_epoch_probs else None)

    # --- inside the step: slices only --------------------------------------------------------
    def targets(self, lo: int, probs: torch.Tensor) -> torch.Tensor:
        hi = lo + probs.shape[0]
        count = self.aux[lo:hi, 0:1].to(probs.dtype)
        return (self.sum[lo:hi] + probs) / (count + 1.0)

    def record(self, lo: int, probs: torch.Tensor, labels: torch.Tensor,
               valid: torch.Tensor) -> None:
        hi = lo + probs.shape[0]
        v = valid.to(probs.dtype)
        self.sum[lo:hi] += probs * v[:, None]
        labels = torch.where(valid, labels, torch.zeros_like(labels))
        gold = probs.gather(1, labels[:, None]).squeeze(1).double()
        vd = valid.double()
        correct = (probs.argmax(dim=1) == labels).double()
        self.aux[lo:hi] += torch.stack([vd, gold * vd, gold * gold * vd, correct * vd], dim=1)
        if self.epoch_probs is not None:
            self.epoch_probs[lo:hi] = probs * v[:, None]

    # --- at epoch boundaries -----------------------------------------------------------------
    def advance(self) -> None:
        """Move every row to its place in the next epoch (one all_to_all per tensor)."""
        new = self.layout.next()
        send, send_counts, recv, recv_counts = exchange_plan(self.layout, new, self.rank)
        send_t = torch.from_numpy(send).to(self.device)
        recv_t = torch.from_numpy(recv).to(self.device)
        for name in ("sum", "aux"):
            old = getattr(self, name)
            out = torch.zeros_like(old)
            rows = old.index_select(0, send_t)
            if _distributed():
                got = old.new_empty((sum(recv_counts), old.shape[1]))
                dist.all_to_all_single(got, rows, output_split_sizes=recv_counts,
                                       input_split_sizes=send_counts)
                rows = got
            out.index_copy_(0, recv_t, rows)
            setattr(self, name, out)
        if self.epoch_probs is not None:
            self.epoch_probs.zero_()
        self.layout = new

    def _gathered(self, tensors: dict[str, torch.Tensor], visit: callable) -> None:
        """Rank 0 gets, chunk by chunk, every rank's valid rows: visit(name, rows, values) with
        `rows` indices into the sorted ids. Collective; every rank has the same per_rank."""
        world = self.layout.world_size
        row_bytes = sum(t.shape[1] * t.element_size() for t in tensors.values())
        chunk = max(1, GATHER_BYTES // max(row_bytes * world, 1))
        per_rank = self.layout.per_rank
        where = [self.layout.positions(r) for r in range(world)] if self.rank == 0 else None
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
                    pos, rows = where[r]
                    sel = (pos >= lo) & (pos < hi)
                    if sel.any():
                        visit(name, rows[sel], values.cpu().numpy()[pos[sel] - lo])

    def save(self, folder: Path) -> None:
        """Collective: rank 0 writes ids/sum/count/stats (and, when recording epoch probabilities,
        epoch_probs.npy: the current epoch's visits so far) into `folder`."""
        tensors = {"sum": self.sum, "aux": self.aux}
        if self.epoch_probs is not None:
            tensors["epoch_probs"] = self.epoch_probs
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
                buffers["epoch_probs"] = np.lib.format.open_memmap(
                    Path(folder) / ".epoch_probs.npy.tmp", mode="w+", dtype=np.float32,
                    shape=(len(self.ids), self.num_classes))
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
        pos, rows = self.layout.positions(self.rank)
        aux = np.zeros((self.layout.per_rank, len(AUX_COLUMNS)), dtype=np.float64)
        aux[pos, 0] = snap.count[rows]
        aux[pos, 1:] = snap.stats[rows]
        total = np.zeros((self.layout.per_rank, self.num_classes), dtype=np.float32)
        total[pos] = snap.sum[rows]
        self.sum = torch.from_numpy(total).to(self.device)
        self.aux = torch.from_numpy(aux).to(self.device)
        if self.epoch_probs is not None and (Path(folder) / "epoch_probs.npy").exists():
            probs = np.zeros_like(total)
            probs[pos] = np.load(Path(folder) / "epoch_probs.npy", mmap_mode="r")[rows]
            self.epoch_probs = torch.from_numpy(probs).to(self.device)
