"""Reading prepared shards: random access by id, exactly-once streaming, per-epoch rank splits.

RandomAccessReader uses wids' indexed tar reader (`wids.wids.IndexedTarSamples`: an mmap index of
one tar file) directly rather than `wids.ShardListDataset`, because the latter, even with
`localname=lambda u: u`, creates a `<shard>.lock` file next to every shard it opens (which fails on a
read-only dataset mount) and prints a line to stderr per instance; the id -> shard arithmetic it
would add is one binary search over the manifest.

Where the shards are (data/locations.py): next to the manifest, in another folder, or at a URL.
Remote shards are read at random from a per-node cache of verified copies (data/shard_cache.py)
and streamed through webdataset's opener, hashed on the way (a copy already in the cache is
streamed from there).

Shard checksums: with verify=True a shard's sha256 is compared with the manifest the first time a
process opens it. The set of verified shards is per process; it is inherited by forked DataLoader
workers and carried along when a reader is pickled, so verifying in the parent before the workers
start (LabeledDataset does) costs one read of each shard, not one per worker.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info
from wids.wids import IndexedTarSamples

from tidal_dist.data.locations import ShardSource, ShardStream
from tidal_dist.data.manifest import Manifest, ShardInfo, SplitInfo, file_sha256, load_labels, load_manifest
from tidal_dist.data.shard_cache import ShardCache
from tidal_dist.job import distributed
from tidal_dist.job.errors import UserError

Transform = Callable[[bytes], torch.Tensor]
Sample = tuple[int, torch.Tensor, int]  # (global id, image, label)

_verified_shards: set[tuple[str, str]] = set()  # (path or URL, sha256) checked by this process


def check_shard(path: Path, shard: ShardInfo, verify: bool) -> None:
    """UserError naming `path` if the shard is missing or (verify) differs from the manifest."""
    if not path.is_file():
        raise UserError(f"shard '{path}' is missing (listed in the manifest); prepare the dataset again")
    if not verify or (str(path), shard.sha256) in _verified_shards:
        return
    size = path.stat().st_size
    if size != shard.bytes or file_sha256(path) != shard.sha256:
        raise UserError(f"shard '{path}' is corrupted: its sha256 does not match the manifest "
                        f"({size} bytes, manifest {shard.bytes}); prepare the dataset again")
    _verified_shards.add((str(path), shard.sha256))


def _split_sample(files: dict[str, bytes], sample_id: int, where: str) -> tuple[int, bytes]:
    """(label, image bytes) from one sample's files keyed by extension."""
    try:
        label = int(files.pop("cls"))
        (image,) = files.values()
    except (KeyError, ValueError):
        raise UserError(f"{where}: sample {sample_id} is malformed (expected a .cls and one image "
                        f"file, found {sorted(files)})") from None
    return label, image


class SampleParser:
    """(label, image bytes) of a sample's members: from the .cls and the one image of a shard
    `prepare` wrote, or, for a user's shards used in place, the first of the manifest's
    image_keys and the label from the labels file (-1: unknown)."""

    def __init__(self, root: Path, manifest: Manifest, info: SplitInfo) -> None:
        self.image_keys = manifest.image_keys if manifest.in_place else None
        self.first_id = info.first_id
        self.labels = load_labels(root, info.name, manifest) if manifest.in_place else None

    def __call__(self, files: dict[str, bytes], sample_id: int, where: str) -> tuple[int, bytes]:
        if self.image_keys is None:
            return _split_sample(files, sample_id, where)
        ext = next((k for k in self.image_keys if k in files), None)
        if ext is None:
            raise UserError(f"{where}: sample {sample_id} has none of the image members "
                            f"{', '.join(self.image_keys)} (found {sorted(files)}); the shard "
                            f"changed since prepare?")
        return int(self.labels[sample_id - self.first_id]), files[ext]


def _apply(transform: Transform, image: bytes, sample_id: int, where: str) -> torch.Tensor:
    try:
        return transform(image)
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for undecodable data
        raise UserError(f"{where}: image of id {sample_id} cannot be decoded ({e})") from None


class RandomAccessReader:
    """reader[id] -> (id, image tensor, label) for any id of one split."""

    def __init__(self, root: str | Path, split: str, transform: Transform, verify: bool = True,
                 max_open_shards: int = 16, shard_url: str | None = None,
                 cache_dir: str | None = None) -> None:
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.info: SplitInfo = self.manifest.split(split)
        self.source = ShardSource.of(self.root, self.manifest.base_url, shard_url)
        self.cache = ShardCache(cache_dir) if self.source.remote else None
        self.transform = transform
        self.verify = verify
        self.max_open_shards = max_open_shards
        self.parse = SampleParser(self.root, self.manifest, self.info)
        self._open: OrderedDict[int, IndexedTarSamples] = OrderedDict()  # LRU of open shards
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.info.num_samples

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # mmaps do not pickle; the new process opens its own
        paths = {self.source.url(s) for s in self.info.shards}
        state["_verified"] = {entry for entry in _verified_shards if entry[0] in paths}
        return state

    def __setstate__(self, state: dict) -> None:
        _verified_shards.update(state.pop("_verified"))
        self.__dict__.update(state)
        self._pid = os.getpid()

    def check_shards_for(self, ids: np.ndarray) -> None:
        """Check the shards holding `ids` now (in this process), e.g. before DataLoader workers fork."""
        for index in sorted({self.info.shard_index_of(int(i)) for i in np.unique(ids)}):
            self._local_file(self.info.shards[index])

    def _local_file(self, shard: ShardInfo) -> Path:
        """The shard's file on this node: checked in place, or a verified copy in the cache."""
        if self.cache is not None:
            return self.cache.fetch(self.source.url(shard), shard)
        path = self.source.local_path(shard)
        check_shard(path, shard, self.verify)
        return path

    def _shard(self, index: int) -> IndexedTarSamples:
        if os.getpid() != self._pid:  # forked: the parent's open mmaps are not ours to share
            self._open, self._pid = OrderedDict(), os.getpid()
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        shard = self.info.shards[index]
        path = self._local_file(shard)
        try:
            tar = IndexedTarSamples(path=str(path))
        except Exception as e:  # wids asserts / struct errors on a damaged tar
            raise UserError(f"shard '{path}' cannot be read as a tar file "
                            f"({type(e).__name__}: {e})") from None
        if len(tar) != shard.tar_samples:
            tar.close()
            raise UserError(f"shard '{path}' holds {len(tar)} samples, the manifest says {shard.tar_samples}")
        self._open[index] = tar
        if len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)[1].close()
        return tar

    def read_raw(self, sample_id: int) -> tuple[int, bytes]:
        """(label, original image bytes) of `sample_id`."""
        index = self.info.shard_index_of(sample_id)  # UserError naming the id if not in the split
        shard = self.info.shards[index]
        where = f"shard '{self.source.url(shard)}'"
        sample = self._shard(index)[shard.position_of(sample_id)]
        key = sample.pop("__key__")
        if not self.manifest.in_place and key != f"{sample_id:010d}":
            raise UserError(f"{where}: expected sample key {sample_id:010d}, found {key}")
        # wids keys the files by extension with its leading dot
        files = {ext.lstrip("."): stream.read() for ext, stream in sample.items()}
        return self.parse(files, sample_id, where)

    def __getitem__(self, sample_id: int) -> Sample:
        sample_id = int(sample_id)
        label, image = self.read_raw(sample_id)
        where = f"shard '{self.source.url(self.info.shard_of(sample_id))}'"
        return sample_id, _apply(self.transform, image, sample_id, where), label

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def select_ids(info: SplitInfo, ids: np.ndarray | None) -> np.ndarray:
    if ids is None:
        return info.ids()
    ids = np.sort(np.asarray(ids, dtype=np.int64).ravel())
    outside = ids[(ids < info.first_id) | (ids > info.last_id)]
    if len(outside):
        raise UserError(f"{len(outside)} ids are not in split '{info.name}' (ids {info.first_id}.."
                        f"{info.last_id}), e.g. {', '.join(map(str, outside[:5]))}")
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if len(repeated):
        raise UserError(f"ids given more than once, e.g. {', '.join(map(str, np.unique(repeated)[:5]))}")
    return ids


class StreamingDataset(IterableDataset):
    """Every selected id exactly once over all ranks x DataLoader workers, with no collective call.

    The sorted ids are cut into world_size * num_workers contiguous, near-equal chunks; global worker
    rank * num_workers + worker_id reads chunk by chunk only the shards that hold its ids, streaming
    each tar from the start and stopping after its last id. A worker with an empty chunk yields
    nothing. Chunks are contiguous in id order, so a rank's samples are not class-shuffled.

    Remote shards (verify=True) are hashed as they stream and read to the end for that, so a
    damaged download fails the pass (naming the URL) after the samples before the damage were
    yielded: the caller's results are then discarded, never committed. A shard is read whole
    once per process for this, as a local shard is hashed whole once per process.
    """

    def __init__(self, root: str | Path, split: str, transform: Transform,
                 ids: np.ndarray | None = None, rank: int | None = None,
                 world_size: int | None = None, verify: bool = True,
                 shard_url: str | None = None, cache_dir: str | None = None) -> None:
        self.root = Path(root)
        manifest = load_manifest(self.root)
        self.info = manifest.split(split)
        self.source = ShardSource.of(self.root, manifest.base_url, shard_url)
        self.cache = ShardCache(cache_dir) if self.source.remote else None
        self.transform = transform
        self.ids = select_ids(self.info, ids)
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {self.rank} is outside world size {self.world_size}")
        self.verify = verify
        self.parse = SampleParser(self.root, manifest, self.info)
        self.keys_are_ids = not manifest.in_place

    @staticmethod
    def assigned_ids(ids: np.ndarray, rank: int, world_size: int, num_workers: int) -> list[np.ndarray]:
        """The ids each DataLoader worker of `rank` yields (num_workers 0: one, the main process)."""
        workers = max(num_workers, 1)
        chunks = np.array_split(np.asarray(ids), world_size * workers)
        return chunks[rank * workers:(rank + 1) * workers]

    def num_samples_for(self, rank: int | None = None, num_workers: int = 0) -> int:
        rank = self.rank if rank is None else rank
        return sum(len(c) for c in self.assigned_ids(self.ids, rank, self.world_size, num_workers))

    def __iter__(self) -> Iterator[Sample]:
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker else (0, 0)
        chunk = self.assigned_ids(self.ids, self.rank, self.world_size, num_workers)[worker_id]
        for shard in self.info.shards:
            wanted = chunk[(chunk >= shard.first_id) & (chunk <= shard.last_id)]
            if len(wanted):
                yield from self._read_shard(shard, wanted)

    def _open(self, shard: ShardInfo) -> ShardStream:
        if self.cache is None:  # a local file: checked whole before the first read
            path = self.source.local_path(shard)
            check_shard(path, shard, self.verify)
            return ShardStream(str(path), shard, check_sha256=False)
        copy = self.cache.cached(shard)
        if copy is not None:  # verified when it was downloaded
            return ShardStream(str(copy), shard, check_sha256=False)
        url = self.source.url(shard)
        return ShardStream(url, shard, self.verify and (url, shard.sha256) not in _verified_shards)

    def _read_shard(self, shard: ShardInfo, wanted: np.ndarray) -> Iterator[Sample]:
        where = f"shard '{self.source.url(shard)}'"
        position = 0
        with self._open(shard) as stream:
            for sample_id, files in stream.samples(self.keys_are_ids):
                if sample_id < wanted[position]:
                    continue
                if sample_id > wanted[position]:
                    break
                label, image = self.parse(files, sample_id, where)
                yield sample_id, _apply(self.transform, image, sample_id, where), label
                position += 1
                if position == len(wanted):
                    break
            stream.finish()  # remote: reads the rest and checks the sha256 (ShardMismatch)
        if self.cache is not None and self.verify:
            _verified_shards.add((self.source.url(shard), shard.sha256))
        if position < len(wanted):
            raise UserError(f"{where} ends or skips before id {wanted[position]}, which the "
                            f"manifest places there (truncated or damaged?); prepare the dataset again")


def collate_samples(batch: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, images, labels = zip(*batch)
    return (torch.tensor(ids, dtype=torch.long), torch.stack(images),
            torch.tensor(labels, dtype=torch.long))


def stream_loader(dataset: StreamingDataset, batch_size: int, num_workers: int,
                  collate: Callable | None = None) -> DataLoader:
    """Batches of (ids, images, labels). Never pass it to accelerator.prepare: Accelerate would
    re-dispatch an iterable dataset from rank 0 and break the exactly-once split."""
    from tidal_dist.job.preemption import loader_worker_init

    # Workers survive a process group's stop signal and hand it to their rank (job/preemption.py).
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      collate_fn=collate or collate_samples, persistent_workers=False,
                      worker_init_fn=loader_worker_init)


# ----------------------------------------------------------------------------------------------
# Training: an exact per-epoch split of the labeled ids over the ranks.

def epoch_assignment(ids: np.ndarray, epoch: int, seed: int, rank: int, world_size: int,
                     batch_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(ids of `rank` for `epoch`, valid mask). Same permutation on every rank (seed, epoch only);
    wrap-around padding makes every rank's count equal (DDP needs equal step counts) and a
    multiple of `batch_size` (a 1-sample last batch breaks BatchNorm in train mode). Padding is
    marked valid=False so it is never counted as a visit. Valid entries over all ranks = `ids`."""
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")
    ordered = np.sort(np.asarray(ids, dtype=np.int64).ravel())  # the caller's order must not matter
    permuted = ordered[epoch_order(len(ordered), epoch, seed)]
    total = padded_length(len(permuted), world_size, batch_size)
    padded = np.resize(permuted, total) if len(permuted) else permuted  # np.resize repeats cyclically
    valid = np.arange(total) < len(permuted)
    return padded[rank::world_size], valid[rank::world_size]


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The epoch's visit order as indices into the sorted labeled ids: entry k of the padded
    order (k < n) is row epoch_order[k]; rank r visits k = r, r + W, r + 2W, ... in that order."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def padded_length(n: int, world_size: int, batch_size: int = 1) -> int:
    """Length of the padded order: a multiple of world_size x batch_size (equal full batches)."""
    chunk = world_size * batch_size
    return -(-n // chunk) * chunk


class LabeledDataset(Dataset):
    """Key (id, valid, seed) -> (id, image, label, valid), read through a RandomAccessReader.

    Used with VisitSampler, which yields the keys of one rank's epoch, so one DataLoader with
    persistent workers serves every epoch of a cycle. The augmentation of each visit draws from
    its own generator seeded by `seed` (a function of run seed, epoch and id): the same visit gets
    the same crop and flip whatever the world size, the loader workers, or a resume in between.
    """

    def __init__(self, reader: RandomAccessReader, ids: np.ndarray) -> None:
        self.reader = reader
        reader.check_shards_for(np.asarray(ids, dtype=np.int64))  # here, so workers inherit it

    def __getitem__(self, key: tuple[int, bool, int]) -> tuple[int, torch.Tensor, int, bool]:
        sample_id, valid, seed = key
        with torch.random.fork_rng(devices=[]):  # leave the process's own RNG untouched
            # The CPU generator alone, which torchvision's transforms draw from: torch.manual_seed
            # also seeds every accelerator backend, and in a process without CUDA each of those
            # queues a lazy call with a formatted stack trace (measured: over half a visit's
            # read + decode + augment time).
            torch.default_generator.manual_seed(seed)
            sample_id, image, label = self.reader[int(sample_id)]
        return sample_id, image, label, bool(valid)


def visit_seed(epoch_seed: int, epoch: int, sample_id: int) -> int:
    return ((epoch_seed * 1_000_003 + epoch) * 10_000_019 + sample_id) % (2**63 - 1)


class VisitSampler(Sampler):
    """Yields LabeledDataset keys for the epoch set by `set_epoch` (runs in the main process, so
    persistent workers see each new epoch)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, bool, int]] = []

    def set_epoch(self, rank_ids: np.ndarray, valid: np.ndarray, epoch_seed: int, epoch: int) -> None:
        if len(rank_ids) != len(valid):
            raise ValueError(f"{len(rank_ids)} ids but {len(valid)} valid flags")
        self.keys = [(i, v, visit_seed(epoch_seed, epoch, i))
                     for i, v in zip(np.asarray(rank_ids).tolist(), np.asarray(valid).tolist())]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)
