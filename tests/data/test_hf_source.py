"""Hugging Face datasets on disk (`hf:DIR`): a save_to_disk folder and a folder of parquet files,
read with pyarrow, image bytes kept, ClassLabel names as class names; a cycle runs on each."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.cycle.test_loop import loop_args
from tests.mp import run_module, tail
from tidal_dist.data.manifest import load_keys, load_labels
from tidal_dist.data.readers import RandomAccessReader
from tidal_dist.data.shards import prepare
from tidal_dist.job.errors import UserError

datasets = pytest.importorskip("datasets")  # installed for the tests only
NAMES = [f"kind_{c}" for c in range(4)]


def png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hf_dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=NAMES),
                                  "note": datasets.Value("string")})

    def make(n):
        return datasets.Dataset.from_dict(
            {"picture": [{"bytes": png(rng), "path": None} for _ in range(n)],
             "kind": [int(v) for v in rng.integers(0, len(NAMES), n)], "note": ["x"] * n},
            features=features)

    dd = datasets.DatasetDict({"train": make(60), "test": make(16)})
    base = tmp_path_factory.mktemp("hf")
    dd.save_to_disk(str(base / "disk"))
    (base / "parquet" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        dd[split].to_parquet(str(base / "parquet" / "data" / f"{split}-00000-of-00001.parquet"))
    return base, dd


@pytest.mark.parametrize("layout", ["disk", "parquet"])
def test_a_cycle_on_each_layout(hf_dataset, tmp_path, layout):
    base, dd = hf_dataset
    out = tmp_path / "shards"
    manifest = prepare(f"hf:{base / layout}", out, shard_size=25, progress=False)
    assert manifest.class_names == NAMES  # the ClassLabel's names
    assert manifest.split("pool").num_samples == 60 and manifest.split("test").num_samples == 16
    assert load_keys(out, "pool")[7] == "train/7"
    assert load_labels(out, "test").tolist() == dd["test"]["kind"]
    reader = RandomAccessReader(out, "pool", lambda data: data)
    rows = dd["train"].cast_column("picture", datasets.Image(decode=False))
    for sample_id in (0, 33, 59):  # the stored bytes, as they are
        assert reader[sample_id][1] == rows[sample_id]["picture"]["bytes"]
    run_dir = tmp_path / "run"
    proc = run_module(["run", *loop_args(out, run_dir, **{"al.cycles": 1, "al.initial": 20,
                                                          "al.budget": 10})])
    assert proc.returncode == 0, tail(proc)
    metrics = json.loads((run_dir / "cycles" / "cycle_0000" / "metrics.json").read_text())
    assert metrics["test_samples"] == 16 and 0 <= metrics["accuracy"] <= 1


def test_columns_by_name_no_labels_and_bad_rows(hf_dataset, tmp_path):
    base, _ = hf_dataset
    with pytest.raises(UserError, match="no label column 'species'"):
        prepare(f"hf:{base / 'disk'}", tmp_path / "a", progress=False, source_options={"label": "species"})
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NAMES))
    manifest = prepare(f"hf:{base / 'parquet'}", tmp_path / "b", progress=False,
                       source_options={"label": "none", "classes": str(classes), "image_key": "picture"})
    assert manifest.split("pool").labeled_count == 0 and manifest.num_classes == 4
    bad = datasets.Dataset.from_dict({"image": [b"not an image", png(np.random.default_rng(1))],
                                      "label": [1, 0]})
    bad.to_parquet(str(tmp_path / "bad" / "train.parquet"))
    with pytest.raises(UserError, match=r"train.parquet' row train/0 has no readable image"):
        prepare(f"hf:{tmp_path / 'bad'}", tmp_path / "c", progress=False)
    manifest = prepare(f"hf:{tmp_path / 'bad'}", tmp_path / "d", skip_bad=True, progress=False)
    assert manifest.skipped == 1 and load_keys(tmp_path / "d", "pool") == ["train/1"]
