"""prepare: shard layout, manifest content, atomic output, re-runs and refusals."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from tidal_dist.data.manifest import load_labels, load_manifest
from tidal_dist.data.shards import prepare
from tidal_dist.data.sources import open_source
from tidal_dist.job.errors import UserError


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tar_samples(path):
    """{key: {ext: bytes}} of one shard, read with the standard library."""
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_synthetic_layout_and_manifest(synthetic_dataset):
    root = synthetic_dataset
    m = load_manifest(root)
    pool, test = m.split("pool"), m.split("test")
    assert [s.nsamples for s in pool.shards] == [37] * 5 + [18]
    assert [s.nsamples for s in test.shards] == [37, 3]
    assert [s.url for s in pool.shards][:2] == ["pool-000000.tar", "pool-000001.tar"]
    assert (pool.first_id, pool.last_id, test.first_id, test.last_id) == (0, 202, 203, 242)
    for split in (pool, test):
        starts = [s.first_id for s in split.shards]
        assert starts == [split.first_id + 37 * i for i in range(len(split.shards))]
        assert all(s.last_id == s.first_id + s.nsamples - 1 for s in split.shards)
        for shard in split.shards:
            path = root / shard.url
            assert sha256(path) == shard.sha256 and path.stat().st_size == shard.bytes
        labels = load_labels(root, split.name)
        assert sha256(root / split.labels_file) == split.labels_sha256
        assert np.bincount(labels, minlength=5).tolist() == split.label_histogram
        assert split.num_samples == len(labels) == sum(s.nsamples for s in split.shards)
    assert m.num_classes == 5 and m.mode == "L" and m.image_size == (8, 8)
    assert m.options == {"shard_size": 37, "skip_bad": False} and m.skipped == 0
    assert m.source == "synthetic:203,5,8x8,1" and m.format_version == 1


def test_shard_contents_match_source(synthetic_dataset):
    root = synthetic_dataset
    source = open_source("synthetic:203,5,8x8,1")
    expected = list(source.samples("test"))
    samples = {}
    for name in ("test-000000.tar", "test-000001.tar"):
        samples.update(tar_samples(root / name))
    assert list(samples) == [f"{i:010d}" for i in range(203, 243)]
    for (label, data, ext), (key, files) in zip(expected, samples.items()):
        assert files == {"cls": str(label).encode(), ext: data}
    labels = load_labels(root, "test")
    assert labels.tolist() == [label for label, _, _ in expected]


def test_mean_std_close_to_numpy(synthetic_dataset):
    m = load_manifest(synthetic_dataset)
    pixels = open_source("synthetic:203,5,8x8,1").images["pool"] / 255.0
    assert m.mean == pytest.approx([pixels.mean()], abs=1e-9)
    assert m.std == pytest.approx([pixels.std()], abs=1e-9)


def test_fashion_mnist_subset(tmp_path, fake_fashion_mnist):
    m = prepare(f"fashion-mnist:{fake_fashion_mnist}", tmp_path / "fm", shard_size=128, progress=False)
    assert [s.nsamples for s in m.split("pool").shards] == [128, 128, 44]
    assert (m.split("test").first_id, m.split("test").last_id) == (300, 359)
    assert m.class_names[0] == "T-shirt/top" and m.split("pool").label_histogram == [30] * 10
    assert m.image_size == (28, 28) and m.mode == "L"
    first = tar_samples(tmp_path / "fm" / "pool-000000.tar")["0000000000"]
    assert np.asarray(Image.open(io.BytesIO(first["png"]))).shape == (28, 28)
    assert load_manifest(tmp_path / "fm") == m


def test_rerun_is_a_noop(tmp_path, capsys):
    out = tmp_path / "ds"
    first = prepare("synthetic:30,3,4x4,1", out, shard_size=8, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    again = prepare("synthetic:30,3,4x4,1", out, shard_size=8, progress=False)
    assert "already prepared" in capsys.readouterr().out
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_output_is_reproducible(tmp_path):
    a = prepare("synthetic:30,3,4x4,3", tmp_path / "a", shard_size=8, progress=False)
    b = prepare("synthetic:30,3,4x4,3", tmp_path / "b", shard_size=8, progress=False)
    assert [s.sha256 for s in a.split("pool").shards] == [s.sha256 for s in b.split("pool").shards]


def test_leftover_partial_is_redone(tmp_path, capsys):
    out = tmp_path / "ds"
    partial = tmp_path / "ds.partial"
    partial.mkdir()
    (partial / "pool-000000.tar").write_bytes(b"half a shard")
    m = prepare("synthetic:30,3,4x4,1", out, shard_size=8, progress=False)
    assert "interrupted" in capsys.readouterr().out
    assert not partial.exists() and load_manifest(out) == m
    assert (out / "pool-000000.tar").stat().st_size == m.split("pool").shards[0].bytes


def test_refuses_other_dataset_in_out(tmp_path):
    out = tmp_path / "ds"
    prepare("synthetic:30,3,4x4,1", out, shard_size=8, progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(UserError, match=r"(?s)synthetic:30,3,4x4,1.*synthetic:40,3,4x4,1"):
        prepare("synthetic:40,3,4x4,1", out, shard_size=8, progress=False)
    with pytest.raises(UserError, match=r"(?s)'shard_size': 8.*'shard_size': 9"):
        prepare("synthetic:30,3,4x4,1", out, shard_size=9, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    assert not (tmp_path / "ds.partial").exists()


def test_refuses_non_empty_folder_without_manifest(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="mine.*no manifest.json"):
        prepare("synthetic:30,3,4x4,1", out, progress=False)
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    (out / "notes.txt").unlink()
    prepare("synthetic:30,3,4x4,1", out, progress=False)  # an empty folder is fine
    assert (out / "manifest.json").exists()


def test_missing_source_path_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="no_such_dir"):
        prepare(f"fashion-mnist:{tmp_path / 'no_such_dir'}", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_truncated_gz_fails_naming_file(tmp_path, write_fashion_mnist):
    raw = write_fashion_mnist(tmp_path / "raw", 40, 10)
    labels = raw / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz"):
        prepare(f"fashion-mnist:{raw}", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_imagefolder_bad_image_and_skip_bad(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "imgs", {"train": {"a": 3, "b": 4}, "val": {"a": 2, "b": 2}})
    (root / "val" / "b" / "zzz.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="zzz.png"):
        prepare(f"imagefolder:{root}", tmp_path / "out", shard_size=3, progress=False)
    # the failure came while writing the test split: no half-written output remains
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    m = prepare(f"imagefolder:{root}", tmp_path / "out", shard_size=3, skip_bad=True, progress=False)
    assert m.skipped == 1 and m.options["skip_bad"] is True
    assert m.split("test").num_samples == 4 and m.split("pool").num_samples == 7
    assert m.image_size is None and m.mode == "RGB" and m.class_names == ["a", "b"]
    pool = tar_samples(tmp_path / "out" / "pool-000000.tar")
    assert pool["0000000001"] == {"cls": b"0", "jpeg": (root / "train/a/img1.JPEG").read_bytes()}
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["skipped"] == 1 and saved["image_size"] is None


def test_bad_shard_size(tmp_path):
    with pytest.raises(UserError, match="shard_size"):
        prepare("synthetic:30,3,4x4,1", tmp_path / "out", shard_size=0, progress=False)
