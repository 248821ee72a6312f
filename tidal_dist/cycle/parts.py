"""Per-rank part files for a sharded pass, and rank 0's merge.

Each rank appends rows (an id and named fields: scalars or fixed-width vectors) to preallocated
.npy files that carry its rank in their name, written at their offset (pwrite, not a memory map, so
the written pages never count in the rank's resident memory): memory stays flat at any pool size
and no collective runs in the loop. After one barrier, rank 0 merges the parts in ascending id
order and checks that the ids are exactly the expected set: scalar fields come back as arrays,
vector fields (and, with `scalars_on_disk`, scalar fields too) as memory-mapped files next to the
parts (a million 2048-wide embeddings need not fit in RAM); `read_rows` reads a block of one
without mapping it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tidal_dist.job.fsutil import new_memmap

CHUNK = 65536  # rows per read or write in the merge


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
        self.files: dict[str, tuple[int, int, int]] = {}  # name -> (fd, data offset, row bytes)
        for name, f in self.fields.items():
            path = part_path(folder, prefix, name, rank)
            array = new_memmap(path, f.dtype, f.shape(max(capacity, 1)))
            offset, row_bytes = array.offset, array.itemsize * (f.width or 1)
            del array  # written through the file from here on
            self.files[name] = (os.open(path, os.O_RDWR), offset, row_bytes)
        unused = np.full(min(max(capacity, 1), CHUNK), -1, dtype=np.int64)
        for lo in range(0, max(capacity, 1), CHUNK):
            self._write("ids", lo, unused[:min(max(capacity, 1) - lo, CHUNK)])
        self.n = 0

    def _write(self, name: str, row: int, values: np.ndarray) -> None:
        fd, offset, row_bytes = self.files[name]
        data = memoryview(np.ascontiguousarray(values, dtype=self.fields[name].dtype)).cast("B")
        at = offset + row * row_bytes
        while len(data):
            written = os.pwrite(fd, data, at)
            data, at = data[written:], at + written

    def append(self, rows: dict[str, np.ndarray]) -> None:
        k = len(rows["ids"])
        for name, f in self.fields.items():
            # as assigning into a memory map would: broadcast, cast to the field's dtype
            self._write(name, self.n, np.broadcast_to(np.asarray(rows[name]), f.shape(k)))
        self.n += k

    def close(self) -> None:
        for fd, _, _ in self.files.values():
            os.fdatasync(fd)  # on disk before rank 0 reads it, as a memory map's flush would be
            os.close(fd)
        self.files = {}


def merge_parts(folder: Path, prefix: str, world_size: int, expected: np.ndarray,
                fields: dict[str, Field], scalars_on_disk: bool = False) -> dict[str, np.ndarray]:
    """Rank 0: every rank's rows in ascending id order; raises unless the ids are exactly
    `expected`, each once (naming missing, doubled and foreign ids). Vector fields, and scalar
    fields with `scalars_on_disk`, come back memory-mapped (`read_rows` reads them in blocks)."""
    counts, chunks = [], []
    for r in range(world_size):
        ids = np.load(part_path(folder, prefix, "ids", r), mmap_mode="r")
        n = int(np.count_nonzero(ids >= 0))  # filled rows are a prefix
        counts.append(n)
        chunks.append(np.array(ids[:n]))
        del ids
    ids = np.concatenate(chunks)
    del chunks
    order = np.argsort(ids, kind="stable")
    merged = {"ids": ids[order]}
    del ids
    _check_exactly_once(merged["ids"], expected)
    place = None
    for name, f in fields.items():
        if f.width is None and not scalars_on_disk:
            merged[name] = np.concatenate([read_rows(part_path(folder, prefix, name, r), 0,
                                                     counts[r])
                                           for r in range(world_size)])[order]
            continue
        if place is None:
            place = np.empty(len(order), dtype=np.int64)
            place[order] = np.arange(len(order))  # row i of the concatenation goes to place[i]
        merged[name] = _merge_to_disk(folder, prefix, name, counts, place, f)
    return merged


def read_rows(path: Path, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of a .npy file, read rather than memory-mapped, so the file's pages never count
    in this process's resident memory."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
        width = int(np.prod(shape[1:], dtype=np.int64))
        f.seek(f.tell() + lo * width * dtype.itemsize)
        rows = np.fromfile(f, dtype=dtype, count=(hi - lo) * width)
    return rows.reshape((hi - lo, *shape[1:]))


def _merge_to_disk(folder: Path, prefix: str, name: str, counts: list[int], place: np.ndarray,
                   f: Field) -> np.ndarray:
    """Scatter each rank's rows to their place in id order, in chunks (flat memory)."""
    out_path = folder / f"{prefix}_{name}.merged.npy"
    out = new_memmap(out_path, f.dtype, f.shape(len(place)))
    start = 0
    for r, n in enumerate(counts):
        part = part_path(folder, prefix, name, r)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            out[place[start + lo:start + hi]] = read_rows(part, lo, hi)
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
