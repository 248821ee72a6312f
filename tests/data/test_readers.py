"""Readers: random access by id, exactly-once streaming over ranks x workers, epoch splits."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tidal_dist.data.manifest import load_labels, load_manifest
from tidal_dist.data.readers import (LabeledDataset, RandomAccessReader, StreamingDataset,
                                     VisitSampler, epoch_assignment, stream_loader, visit_seed)
from tidal_dist.data.transforms import build_transform
from tidal_dist.job.errors import UserError


@pytest.fixture(scope="module")
def transform(synthetic_dataset):
    return build_transform("none", load_manifest(synthetic_dataset), train=False)


def flip_byte(path: Path, offset: int = 1600) -> None:
    """Damage one byte inside the first image; the tar structure stays valid."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------- random access

def test_every_id_at_random(synthetic_dataset, transform):
    for split in ("pool", "test"):
        reader = RandomAccessReader(synthetic_dataset, split, transform)
        info = reader.info
        labels = load_labels(synthetic_dataset, split)
        assert len(reader) == info.num_samples
        for sample_id in np.random.default_rng(0).permutation(info.ids()):
            got_id, image, label = reader[sample_id]
            assert got_id == sample_id and label == labels[sample_id - info.first_id]
            assert image.shape == (1, 8, 8)
        reader.close()


def test_same_image_through_both_readers(synthetic_dataset, transform):
    reader = RandomAccessReader(synthetic_dataset, "test", transform)
    streamed = {i: image for i, image, _ in StreamingDataset(synthetic_dataset, "test", transform)}
    assert all(torch.equal(reader[i][1], streamed[i]) for i in (203, 239, 240, 242))


def test_id_outside_split(synthetic_dataset, transform):
    reader = RandomAccessReader(synthetic_dataset, "pool", transform)
    with pytest.raises(UserError, match="id 203 is not in split 'pool'"):
        reader[203]


def test_reader_missing_and_corrupted_shard(synthetic_dataset, copy_dataset, transform):
    root = copy_dataset(synthetic_dataset)
    (root / "pool-000001.tar").unlink()
    flip_byte(root / "pool-000003.tar")
    reader = RandomAccessReader(root, "pool", transform)
    assert reader[0][0] == 0
    with pytest.raises(UserError, match=r"shard '.*pool-000001.tar' is missing"):
        reader[40]
    with pytest.raises(UserError, match=r"shard '.*pool-000003.tar' is corrupted"):
        reader[111]
    unverified = RandomAccessReader(root, "pool", transform, verify=False)
    assert unverified[112][0] == 112  # a sample after the damaged one still reads


def test_labeled_dataset_in_loader_workers(synthetic_dataset, transform):
    reader = RandomAccessReader(synthetic_dataset, "pool", transform)
    labeled = np.arange(0, 203, 3)
    sampler = VisitSampler()
    loader = DataLoader(LabeledDataset(reader, labeled), batch_size=8, sampler=sampler,
                        num_workers=2, persistent_workers=True)
    labels = load_labels(synthetic_dataset, "pool")
    for epoch in range(2):  # the same workers serve a new epoch's keys
        rank_ids, valid = epoch_assignment(labeled, epoch=epoch, seed=0, rank=1, world_size=2)
        sampler.set_epoch(rank_ids, valid, epoch_seed=0, epoch=epoch)
        seen = []
        for ids, images, batch_labels, batch_valid in loader:
            assert images.shape[1:] == (1, 8, 8) and batch_valid.dtype == torch.bool
            assert batch_labels.tolist() == labels[ids.numpy()].tolist()
            seen += ids.tolist()
        assert seen == rank_ids.tolist()


def test_augmentation_is_a_function_of_the_visit(synthetic_dataset):
    """Same (seed, epoch, id): same crop/flip in any process or worker; other epoch: other draw."""
    manifest = load_manifest(synthetic_dataset)
    reader = RandomAccessReader(synthetic_dataset, "pool", build_transform("crop_flip", manifest, train=True))
    dataset = LabeledDataset(reader, np.arange(203))
    a = [dataset[(i, True, visit_seed(7, 0, i))][1] for i in range(20)]
    torch.manual_seed(123)  # the process RNG must not matter
    b = [dataset[(i, True, visit_seed(7, 0, i))][1] for i in range(20)]
    c = [dataset[(i, True, visit_seed(7, 1, i))][1] for i in range(20)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c))


# ---------------------------------------------------------------------------------- streaming

def stream_ids(dataset: StreamingDataset, num_workers: int) -> list[int]:
    return [i for ids, _, _ in stream_loader(dataset, batch_size=10, num_workers=num_workers)
            for i in ids.tolist()]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("filtered", [False, True])
def test_streaming_exactly_once(synthetic_dataset, transform, world_size, num_workers, filtered):
    split = load_manifest(synthetic_dataset).split("pool")
    rng = np.random.default_rng(world_size * 10 + num_workers)
    # a filter that leaves some shards without any selected id
    ids = rng.permutation(np.r_[5:30, 120:190])[:57] if filtered else None
    expected = sorted(ids.tolist()) if filtered else split.ids().tolist()
    seen = []
    for rank in range(world_size):
        dataset = StreamingDataset(synthetic_dataset, "pool", transform, ids=ids, rank=rank,
                                   world_size=world_size)
        rank_ids = stream_ids(dataset, num_workers)
        assert len(rank_ids) == dataset.num_samples_for(rank, num_workers)
        assert sorted(rank_ids) == np.concatenate(
            StreamingDataset.assigned_ids(dataset.ids, rank, world_size, num_workers)).tolist()
        seen += rank_ids
    assert sorted(seen) == expected and len(seen) == len(set(seen))


def test_streaming_labels_and_more_workers_than_shards(synthetic_dataset, transform):
    # the test split has 2 shards and 40 ids; 3 ranks x 2 workers = 6 readers, and with a 4-id
    # filter some readers get nothing: they must end quietly
    labels = load_labels(synthetic_dataset, "test")
    for ids, expected_count in ((None, 40), (np.array([203, 204, 240, 242]), 4)):
        seen = Counter()
        for rank in range(3):
            dataset = StreamingDataset(synthetic_dataset, "test", transform, ids=ids, rank=rank, world_size=3)
            for batch_ids, images, batch_labels in stream_loader(dataset, batch_size=4, num_workers=2):
                assert batch_labels.tolist() == labels[batch_ids.numpy() - 203].tolist()
                seen.update(batch_ids.tolist())
        assert len(seen) == expected_count and set(seen.values()) == {1}


def test_streaming_bad_ids(synthetic_dataset, transform):
    with pytest.raises(UserError, match="2 ids are not in split 'test'.*e.g. 5, 300"):
        StreamingDataset(synthetic_dataset, "test", transform, ids=np.array([300, 210, 5]))
    with pytest.raises(UserError, match="more than once, e.g. 210"):
        StreamingDataset(synthetic_dataset, "test", transform, ids=np.array([210, 211, 210]))
    with pytest.raises(UserError, match="rank 2 is outside world size 2"):
        StreamingDataset(synthetic_dataset, "test", transform, rank=2, world_size=2)


def test_streaming_missing_corrupted_truncated(synthetic_dataset, copy_dataset, transform):
    root = copy_dataset(synthetic_dataset)
    flip_byte(root / "pool-000002.tar")
    with pytest.raises(UserError, match=r"shard '.*pool-000002.tar' is corrupted"):
        list(StreamingDataset(root, "pool", transform, ids=np.array([80])))
    shard = root / "pool-000004.tar"
    shard.write_bytes(shard.read_bytes()[:30000])
    # through a DataLoader worker (the error keeps its type; torch then spends ~5 s joining the
    # worker that raised, a DataLoader trait)
    with pytest.raises(UserError, match=r"shard '.*pool-000004.tar' is corrupted"):
        stream_ids(StreamingDataset(root, "pool", transform, ids=np.array([150, 170])), num_workers=1)
    truncated = r"shard '.*pool-000004.tar' (cannot be read|ends or skips before id 170)"
    with pytest.raises(UserError, match=truncated):
        list(StreamingDataset(root, "pool", transform, ids=np.array([150, 170]), verify=False))
    (root / "test-000001.tar").unlink()
    with pytest.raises(UserError, match=r"shard '.*test-000001.tar' is missing"):
        list(StreamingDataset(root, "test", transform))


@pytest.mark.multiprocess
def test_streaming_with_torchrun(synthetic_dataset, tmp_path):
    worker = Path(__file__).with_name("stream_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(tmp_path), str(synthetic_dataset)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    per_rank = [[int(v) for v in (tmp_path / f"ids-rank{r}.txt").read_text().split()] for r in (0, 1)]
    assert all(per_rank)
    seen = per_rank[0] + per_rank[1]
    assert sorted(seen) == list(range(203)) and len(seen) == len(set(seen))


# ---------------------------------------------------------------------------------- epoch split

@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 10, 101])
def test_epoch_assignment_covers_exactly_once(world_size, n):
    ids = np.random.default_rng(n).choice(10_000, size=n, replace=False)
    parts = [epoch_assignment(ids, epoch=4, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({len(rank_ids) for rank_ids, _ in parts}) == 1  # equal counts: DDP steps match
    valid_ids = np.concatenate([rank_ids[valid] for rank_ids, valid in parts])
    assert sorted(valid_ids.tolist()) == sorted(ids.tolist())
    padding = sum(int((~valid).sum()) for _, valid in parts)
    assert padding == -n % world_size
    assert all(np.isin(rank_ids, ids).all() for rank_ids, _ in parts)  # padding repeats real ids


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_epoch_assignment_pads_to_full_batches(world_size):
    ids = np.arange(61)
    parts = [epoch_assignment(ids, 0, 7, r, world_size, batch_size=6) for r in range(world_size)]
    assert all(len(rank_ids) % 6 == 0 for rank_ids, _ in parts)  # no short last batch
    assert len({len(rank_ids) for rank_ids, _ in parts}) == 1
    valid_ids = np.concatenate([rank_ids[valid] for rank_ids, valid in parts])
    assert sorted(valid_ids.tolist()) == ids.tolist()


def test_epoch_assignment_is_seeded():
    ids = np.arange(50)
    a = epoch_assignment(ids, epoch=0, seed=1, rank=0, world_size=2)[0]
    assert np.array_equal(a, epoch_assignment(ids[::-1], epoch=0, seed=1, rank=0, world_size=2)[0])
    assert not np.array_equal(a, epoch_assignment(ids, epoch=1, seed=1, rank=0, world_size=2)[0])
    assert not np.array_equal(a, epoch_assignment(ids, epoch=0, seed=2, rank=0, world_size=2)[0])
    empty_ids, empty_valid = epoch_assignment(np.array([], dtype=np.int64), 0, 0, 0, 2)
    assert len(empty_ids) == 0 and len(empty_valid) == 0
