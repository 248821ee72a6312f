"""`tidal-dist predict`: a cycle's model on the unlabeled pool, the test split, or another prepared
dataset; one process and two (torchrun, gloo) write the same rows; the rows agree with the Python
API's model on the same images."""

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.mp import run_module, tail, torchrun
from tidal_dist import api
from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.readers import RandomAccessReader


@pytest.fixture(scope="module")
def trained_run(synthetic_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("predict") / "run"
    proc = run_module(["run", f"data.root={synthetic_dataset}", "data.num_workers=0",
                       "model.backbone=small_cnn", "model.width=4", "train.epochs=1",
                       "train.batch_size=16", "al.initial=20", "al.budget=6", "al.cycles=2",
                       "al.subset_size=40", f"run.dir={run_dir}"])
    assert proc.returncode == 0, tail(proc)
    return run_dir


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predict_the_unlabeled_pool_on_one_and_two_ranks(trained_run, synthetic_dataset, tmp_path):
    out = tmp_path / "p.csv"
    one = run_module(["predict", str(trained_run), "--out", str(out)])
    assert one.returncode == 0, tail(one)
    rows = read_csv(out)
    assert list(rows[0]) == ["id", "original_key", "predicted", "predicted_name", "probability",
                             "td_uncertainty"]
    run = api.Run(trained_run)
    labeled = run.cycle(-1).labeled_ids
    pool = load_manifest(synthetic_dataset).split("pool").ids()
    ids = np.array([int(r["id"]) for r in rows])
    assert np.array_equal(ids, np.setdiff1d(pool, labeled))  # unlabeled ids only, ascending

    # the same model through the Python API, on the images read straight from the shards
    model = api.load_model(trained_run)
    reader = RandomAccessReader(synthetic_dataset, "pool", transform=None)
    expected = model.predict([reader.read_raw(int(i))[1] for i in ids])
    names = model.class_names
    assert [int(r["predicted"]) for r in rows] == expected["class"].tolist()
    assert [r["predicted_name"] for r in rows] == [names[c] for c in expected["class"]]
    assert [float(r["probability"]) for r in rows] == pytest.approx(expected["probability"], abs=1e-5)
    assert [float(r["td_uncertainty"]) for r in rows] == pytest.approx(expected["td_uncertainty"],
                                                                      abs=1e-5)
    assert all(r["original_key"] == f"train/{r['id']}" for r in rows)  # the source's own index

    parquet = tmp_path / "p.parquet"
    two = torchrun(2, ["-m", "tidal_dist", "predict", str(trained_run), "--out", str(parquet)])
    assert two.returncode == 0, tail(two)
    table = pq.read_table(parquet).to_pydict()
    assert table["id"] == ids.tolist()
    assert table["predicted"] == [int(r["predicted"]) for r in rows]
    assert table["probability"] == pytest.approx([float(r["probability"]) for r in rows], abs=1e-5)
    assert not list(tmp_path.glob(".*parts"))  # the part files are gone


def test_predict_the_test_split_and_an_earlier_cycle(trained_run, synthetic_dataset, tmp_path):
    out = tmp_path / "t.csv"
    proc = run_module(["predict", str(trained_run), "--cycle", "0", "--split", "test",
                       "--out", str(out)])
    assert proc.returncode == 0, tail(proc)
    ids = [int(r["id"]) for r in read_csv(out)]
    assert ids == load_manifest(synthetic_dataset).split("test").ids().tolist()
    assert "cycle 0" in proc.stdout


@pytest.mark.parametrize("extra, message", [
    (["--cycle", "5"], "--cycle 5: run dir .* has cycles 0..1"),
    (["--split", "elsewhere"], "--split 'elsewhere': expected pool, test, or a folder"),
])
def test_predict_refuses_bad_arguments(trained_run, tmp_path, extra, message):
    import re

    proc = run_module(["predict", str(trained_run), "--out", str(tmp_path / "x.csv"), *extra])
    assert proc.returncode == 2 and re.search(message, proc.stderr), tail(proc)
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.csv").exists()
