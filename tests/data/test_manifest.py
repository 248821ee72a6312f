"""Manifest: loading, id arithmetic, verify(), labels, summary, and the wids index format."""

import json

import numpy as np
import pytest
import wids

from tidal_dist.data.manifest import load_labels, load_manifest, summary, verify
from tidal_dist.job.errors import UserError


def test_split_helpers(synthetic_dataset):
    m = load_manifest(synthetic_dataset)
    pool = m.split("pool")
    assert pool.ids().tolist() == list(range(203))
    assert pool.shard_of(0).url == "pool-000000.tar"
    assert pool.shard_of(36).url == "pool-000000.tar" and pool.shard_of(37).url == "pool-000001.tar"
    assert pool.shard_of(202).url == "pool-000005.tar"
    assert pool.shard_paths(synthetic_dataset)[1] == synthetic_dataset / "pool-000001.tar"
    for bad in (-1, 203):
        with pytest.raises(UserError, match=f"id {bad} is not in split 'pool'"):
            pool.shard_of(bad)
    assert m.split("test").contains(203) and not m.split("test").contains(202)
    with pytest.raises(UserError, match="no split 'train'"):
        m.split("train")


def test_load_manifest_errors(tmp_path, synthetic_dataset, copy_dataset):
    with pytest.raises(UserError, match=f"'{tmp_path / 'manifest.json'}' does not exist"):
        load_manifest(tmp_path)
    root = copy_dataset(synthetic_dataset)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json' cannot be read"):
        load_manifest(root)
    data = json.loads((synthetic_dataset / "manifest.json").read_text())
    del data["splits"]["pool"]["first_id"]
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="manifest.json' is malformed"):
        load_manifest(root)
    data["format_version"] = 99
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="format_version 99"):
        load_manifest(root)


def test_verify_clean(synthetic_dataset):
    assert verify(synthetic_dataset) == []


def test_verify_finds_missing_and_corrupted(synthetic_dataset, copy_dataset):
    root = copy_dataset(synthetic_dataset)
    (root / "pool-000002.tar").unlink()
    shard = root / "test-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1600] ^= 0xFF  # inside the first image (its data starts at 1536): the tar stays valid
    shard.write_bytes(bytes(data))
    (root / "test-labels.npy").write_bytes((root / "pool-labels.npy").read_bytes())
    problems = verify(root)
    assert len(problems) == 3
    assert "pool-000002.tar' is missing" in problems[0]
    assert "test-000001.tar': sha256 does not match" in problems[1]
    assert "test-labels.npy" in problems[2]


def test_load_labels(synthetic_dataset, copy_dataset):
    labels = load_labels(synthetic_dataset, "test")
    assert labels.dtype == np.int64 and labels.shape == (40,)
    root = copy_dataset(synthetic_dataset)
    (root / "test-labels.npy").write_bytes((root / "pool-labels.npy").read_bytes())
    with pytest.raises(UserError, match=r"test-labels.npy': shape \(203,\)"):
        load_labels(root, "test")
    (root / "test-labels.npy").unlink()
    with pytest.raises(UserError, match="test-labels.npy' cannot be read"):
        load_labels(root, "test")


def test_summary(synthetic_dataset):
    text = summary(load_manifest(synthetic_dataset))
    assert "synthetic" in text and "class_0" in text
    assert "pool      203 samples, ids 0..202, 6 shards" in text
    assert "test      40 samples, ids 203..242, 2 shards" in text


def test_wids_index_is_readable_by_wids(synthetic_dataset, tmp_path):
    index = json.loads((synthetic_dataset / "pool.wids.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [s["url"] for s in index["shardlist"]][0] == "pool-000000.tar"  # relative to the index
    ds = wids.ShardListDataset(str(synthetic_dataset / "pool.wids.json"), localname=lambda url: url,
                               transformations=[lambda sample: sample])
    assert len(ds) == 203
    sample = ds[150]
    assert sample["__key__"] == "0000000150"
    assert int(sample[".cls"].read()) == load_labels(synthetic_dataset, "pool")[150]
    ds.close()


def test_keys_and_a_manifest_written_before_keys(synthetic_dataset, copy_dataset):
    from tidal_dist.data.manifest import Manifest, load_keys, original_keys

    manifest = load_manifest(synthetic_dataset)
    assert original_keys(synthetic_dataset, "test", np.array([203, 205])) == ["test/0", "test/2"]
    data = manifest.to_dict()
    assert "num_labeled" not in data["splits"]["pool"] and "shard_keys" not in data  # all known
    old = copy_dataset(synthetic_dataset)
    for split in data["splits"].values():  # as an earlier version wrote it
        del split["keys_file"], split["keys_sha256"]
    (old / "manifest.json").write_text(json.dumps(data))
    assert Manifest.from_dict(data) == load_manifest(old) and load_keys(old, "pool") is None
    assert original_keys(old, "pool", np.array([7])) == ["0000000007"]
    assert verify(old) == [] and load_manifest(old).split("pool").fully_labeled


def test_key_cursor_reads_the_keys_of_ascending_ids_a_chunk_at_a_time(synthetic_dataset,
                                                                      copy_dataset, monkeypatch):
    from tidal_dist.data.manifest import KeyCursor, load_keys

    monkeypatch.setattr(KeyCursor, "CHUNK", 7)  # keys cut across chunk ends
    keys = load_keys(synthetic_dataset, "pool")
    ids = np.sort(np.random.default_rng(0).choice(len(keys), 60, replace=False))
    cursor = KeyCursor(synthetic_dataset, "pool")
    got = cursor.keys(ids[:25]) + cursor.keys(ids[25:])  # one pass, over two calls
    assert got == [keys[i] for i in ids]

    damaged = copy_dataset(synthetic_dataset)
    path = damaged / load_manifest(damaged).split("pool").keys_file
    path.write_text(json.dumps(keys[:10]))  # ends early
    with pytest.raises(UserError, match=r"pool-keys.json': ends before id 20; expected a list"):
        KeyCursor(damaged, "pool").keys(np.array([3, 20]))
    path.write_text('["a", 7]')
    with pytest.raises(UserError, match="key 1 is not a string"):
        KeyCursor(damaged, "pool").keys(np.array([1]))
