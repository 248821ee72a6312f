"""Existing WebDataset shards (`wds:PATTERN`): indexed in place or copied, read by id and streamed,
and a 2-process run on them that picks what a run on a --copy of them picks."""

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from tests.cycle.test_loop import loop_args
from tests.mp import run_module, tail, torchrun
from tidal_dist.data.locations import ShardSource
from tidal_dist.data.manifest import file_sha256, load_keys, load_labels, load_manifest, verify
from tidal_dist.data.readers import RandomAccessReader, StreamingDataset
from tidal_dist.data.shards import prepare
from tidal_dist.job.errors import UserError

CLASSES = 12  # more than 10, so sorting class ids as strings would permute them


def jpeg(rng, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder, prefix, shards, per_shard, label="cls", seed=0, key_prefix="img"):
    """Shards in the common convention: string keys, jpg, the label in .cls (or a .json field),
    an extra .txt member. Returns {key: (label, jpg bytes)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{prefix}-{s:03d}.tar")) as sink:
            for i in range(per_shard):
                key = f"{key_prefix}_{s}_{i:04d}_x{(s * 7919 + i * 104729) % 997}"
                cls = int(rng.integers(0, CLASSES))
                sample = {"__key__": key, "jpg": jpeg(rng), "txt": f"caption {key}"}
                if label == "cls":
                    sample["cls"] = cls
                else:
                    sample["json"] = {"label": cls, "source": "camera"}
                sink.write(sample)
                written[key] = (cls, sample["jpg"])
    return written


@pytest.fixture(scope="module")
def user_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_wds")
    pool = write_shards(folder, "train", 3, 40, seed=1)
    val = write_shards(folder, "val", 1, 24, seed=2, key_prefix="val")
    return folder, pool, val


def in_place(folder, out, **kw):
    return prepare(f"wds:{folder}/train-{{000..002}}.tar", out, progress=False,
                   source_options={"eval_source": f"wds:{folder}/val-000.tar", **kw})


def test_indexed_in_place_without_copying(user_shards, tmp_path):
    folder, pool, val = user_shards
    out = tmp_path / "indexed"
    manifest = in_place(folder, out)
    assert manifest.in_place and not list(out.glob("*.tar"))  # no image copied
    assert manifest.class_names == [str(c) for c in range(CLASSES)]  # numeric, not "10" < "2"
    split = manifest.split("pool")
    for shard in split.shards:  # the manifest's checksums are those of the user's files
        path = folder / shard.url
        assert shard.sha256 == file_sha256(path) and shard.bytes == path.stat().st_size
    keys = load_keys(out, "pool")
    assert keys == list(pool)
    assert load_labels(out, "pool").tolist() == [pool[k][0] for k in keys]
    assert load_keys(out, "test") == list(val)
    source = ShardSource.of(out, manifest.base_url)
    assert not source.remote and verify(out, shard_problem=source.problem) == []
    wids = json.loads((out / "pool.wids.json").read_text())["shardlist"]
    assert [(w["url"], w["nsamples"]) for w in wids] == [(str(folder / f"train-{s:03d}.tar"), 40)
                                                          for s in range(3)]
    proc = run_module(["inspect", str(out), "--verify"])
    assert proc.returncode == 0 and "used in place" in proc.stdout, tail(proc)
    raw = lambda data: data  # noqa: E731  (the bytes as stored)
    reader = RandomAccessReader(out, "pool", raw)
    for sample_id in (0, 39, 40, 119):
        _, image, label = reader[sample_id]
        assert (label, image) == pool[keys[sample_id]]  # the original bytes, not re-encoded
    streamed = list(StreamingDataset(out, "test", raw, rank=0, world_size=1))
    test_keys = load_keys(out, "test")
    assert [(label, image) for _, image, label in streamed] == [val[k] for k in test_keys]


def test_json_label_and_a_pipe_opener(tmp_path):
    folder = tmp_path / "src"
    pool = write_shards(folder, "train", 2, 10, label="json", seed=3)
    out = tmp_path / "indexed"
    manifest = prepare(f"wds:pipe:cat {folder}/train-{{000..001}}.tar", out, progress=False,
                       source_options={"label": "json:label"})
    assert manifest.base_url == f"pipe:cat {folder}/{{shard}}" and manifest.split("test").num_samples == 0
    assert load_labels(out, "pool").tolist() == [pool[k][0] for k in load_keys(out, "pool")]
    streamed = list(StreamingDataset(out, "pool", lambda d: d, rank=0, world_size=1))
    assert [image for _, image, _ in streamed] == [pool[k][1] for k in load_keys(out, "pool")]
    reader = RandomAccessReader(out, "pool", lambda d: d, cache_dir=str(tmp_path / "cache"))
    assert reader[13][1:] == pool[load_keys(out, "pool")[13]][::-1]  # through the node's cache


def test_bad_samples_named_skipped_and_counted(tmp_path):
    folder = tmp_path / "src"
    write_shards(folder, "train", 1, 6, seed=4)
    with wds.TarWriter(str(folder / "train-001.tar")) as sink:
        sink.write({"__key__": "broken", "jpg": b"not a jpeg", "cls": 1})
        sink.write({"__key__": "fine", "jpg": jpeg(np.random.default_rng(5)), "cls": 2})
        sink.write({"__key__": "no_image", "txt": "nothing", "cls": 3})
    pattern = f"wds:{folder}/train-{{000..001}}.tar"
    with pytest.raises(UserError, match=r"train-001.tar': sample 'broken' has an image \(jpg\) that cannot be decoded"):
        prepare(pattern, tmp_path / "a", progress=False)
    manifest = prepare(pattern, tmp_path / "b", skip_bad=True, progress=False)
    assert manifest.skipped == 2 and manifest.split("pool").num_samples == 7
    assert manifest.split("pool").shards[1].skipped_positions == (0, 2)
    reader = RandomAccessReader(tmp_path / "b", "pool", lambda d: d)
    assert reader[6][2] == 2 and load_keys(tmp_path / "b", "pool")[6] == "fine"
    streamed = list(StreamingDataset(tmp_path / "b", "pool", lambda d: d, rank=0, world_size=1))
    assert [i for i, _, _ in streamed] == list(range(7)) and streamed[6][2] == 2

    with wds.TarWriter(str(folder / "train-002.tar")) as sink:
        sink.write({"__key__": "fine", "jpg": jpeg(np.random.default_rng(6)), "cls": 2})
    with pytest.raises(UserError, match="duplicate sample key 'fine'"):
        prepare(f"wds:{folder}/train-{{001..002}}.tar", tmp_path / "c", skip_bad=True, progress=False)


def test_unlabeled_pool_and_an_eval_sample_without_label(tmp_path):
    folder = tmp_path / "src"
    write_shards(folder, "train", 1, 5, seed=7)
    with wds.TarWriter(str(folder / "val-000.tar")) as sink:
        sink.write({"__key__": "v0", "jpg": jpeg(np.random.default_rng(8)), "cls": 1})
        sink.write({"__key__": "v1", "jpg": jpeg(np.random.default_rng(9))})
    with pytest.raises(UserError, match="sample 'v1' has no label"):
        prepare(f"wds:{folder}/train-000.tar", tmp_path / "a", progress=False,
                source_options={"eval_source": f"wds:{folder}/val-000.tar"})
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"c{i}" for i in range(CLASSES)) + "\n")
    manifest = prepare(f"wds:{folder}/train-000.tar", tmp_path / "b", progress=False,
                       source_options={"label": "none", "classes": str(classes)})
    assert manifest.split("pool").labeled_count == 0 and manifest.num_classes == CLASSES
    assert (load_labels(tmp_path / "b", "pool") == -1).all()


def test_same_picks_in_place_and_copied(user_shards, tmp_path):
    folder, _, _ = user_shards
    placed = tmp_path / "placed"
    in_place(folder, placed)
    copied = tmp_path / "copied"
    proc = run_module(["prepare", "--source", f"wds:{folder}/train-{{000..002}}.tar", "--eval-source",
                       f"wds:{folder}/val-000.tar", "--copy", "--shard-size", "50", "--out", str(copied)])
    assert proc.returncode == 0, tail(proc)
    assert len(list(copied.glob("pool-*.tar"))) == 3 and not load_manifest(copied).in_place
    assert load_keys(copied, "pool") == load_keys(placed, "pool")
    picks = {}
    for name, root in (("placed", placed), ("copied", copied)):
        run_dir = tmp_path / f"run_{name}"
        proc = torchrun(2, ["-m", "tidal_dist", "run", *loop_args(
            root, run_dir, **{"al.cycles": 1, "al.initial": 24, "al.budget": 12, "al.subset_size": 80})])
        assert proc.returncode == 0, tail(proc)
        keys = load_keys(root, "pool")
        with np.load(run_dir / "cycles" / "cycle_0000" / "queried.npz") as queried:
            picks[name] = [keys[i] for i in queried["ids"].tolist()]  # what was picked, by key
        assert len(picks[name]) == 12
    assert picks["placed"] == picks["copied"]
    assert set(picks["placed"]) <= set(load_keys(placed, "pool"))
