"""Oracles: the file oracle's export / import round trip, and every bad labels file."""

import csv

import numpy as np
import pytest

from tests.mp import run_module, tail
from tidal_dist.cycle.oracle import read_labels_file
from tidal_dist.data.manifest import load_labels, load_manifest
from tidal_dist.job.errors import UserError


@pytest.fixture
def manifest(synthetic_dataset):
    return load_manifest(synthetic_dataset)


def write_labels(path, rows, header=("id", "label")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


QUERIED = np.array([4, 9, 17])


def test_reads_indices_and_class_names_in_query_order(tmp_path, manifest):
    p = write_labels(tmp_path / "l.csv", [(17, 2), (4, manifest.class_names[3]), (9, 0)])
    assert read_labels_file(p, QUERIED, manifest).tolist() == [3, 0, 2]


@pytest.mark.parametrize("rows, message", [
    ([(4, 1), (9, 1), (17, 1), (99999, 1)], "unknown id 99999"),
    ([(4, 1), (9, 1), (17, 1), (9, 2)], "duplicate id 9"),
    ([(4, 1), (9, 1), (17, 1), (5, 1)], "id 5 was not queried"),
    ([(4, 1), (9, 1)], r"1 queried id\(s\) have no label: \[17\]"),
    ([(4, 1), (9, 7), (17, 1)], "label '7' is out of range"),
    ([(4, 1), (9, "cat"), (17, 1)], "label 'cat' is out of range"),
    ([(4, 1), ("x", 1), (17, 1)], "id 'x' is not an integer"),
])
def test_bad_labels_files_are_rejected_naming_the_problem(tmp_path, manifest, rows, message):
    p = write_labels(tmp_path / "l.csv", rows)
    with pytest.raises(UserError, match=message) as e:
        read_labels_file(p, QUERIED, manifest)
    assert "nothing imported" in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("encoding, newline, delimiter", [
    ("utf-8-sig", "\r\n", ","),   # Excel's "CSV UTF-8": byte-order mark, CRLF
    ("utf-8-sig", "\r\n", ";"),   # the same in a locale with decimal commas
    ("utf-8", "\r\n", "\t"),      # tab-separated export
    ("utf-16", "\r\n", "\t"),     # Excel's "Unicode text": UTF-16 LE with a byte-order mark
    ("utf-16-be", "\n", ","),      # big-endian, its mark written by hand below
])
def test_labels_files_saved_by_spreadsheet_programs(tmp_path, manifest, encoding, newline,
                                                    delimiter):
    p = tmp_path / "l.csv"
    rows = [("id", "label"), (17, 2), (4, manifest.class_names[3]), (9, 0)]
    text = newline.join(delimiter.join(str(c) for c in row) for row in rows) + newline
    bom = "\ufeff".encode(encoding) if encoding == "utf-16-be" else b""  # the others add theirs
    p.write_bytes(bom + text.encode(encoding))
    if encoding == "utf-8-sig":
        assert p.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert read_labels_file(p, QUERIED, manifest).tolist() == [3, 0, 2]


def test_an_unknown_encoding_names_the_encodings_read(tmp_path, manifest):
    p = tmp_path / "l.csv"
    p.write_bytes("id,label\n4,\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not utf-8 text") as e:
        read_labels_file(p, QUERIED, manifest)
    assert "UTF-16/32 with a byte-order mark" in str(e.value) and str(p) in str(e.value)


def test_rows_with_more_fields_than_the_header_are_rejected(tmp_path, manifest):
    p = tmp_path / "l.csv"
    p.write_text("id,label\n4,1\n9,1,3\n17,1,\n")  # a trailing empty cell is only a delimiter
    with pytest.raises(UserError, match=r"line 3: 3 fields under the 2-column header 'id,label': "
                                        r"extra \['3'\]") as e:
        read_labels_file(p, QUERIED, manifest)
    assert "line 4" not in str(e.value)
    p.write_text("id,label,note\n4,1,sure\n9,1\n17,1,maybe\n")  # a named column is ignored
    assert read_labels_file(p, QUERIED, manifest).tolist() == [1, 1, 1]


def test_header_is_required(tmp_path, manifest):
    p = write_labels(tmp_path / "l.csv", [(4, 1)], header=None)
    with pytest.raises(UserError, match="header line 'id,label'"):
        read_labels_file(p, QUERIED, manifest)


def test_file_oracle_round_trip(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", f"data.root={synthetic_dataset}", "data.num_workers=0",
            "model.backbone=small_cnn", "model.width=4", "train.epochs=1", "train.batch_size=16",
            "al.initial=20", "al.budget=6", "al.cycles=2", "al.subset_size=40", "al.oracle=file",
            f"run.dir={run_dir}"]
    first = run_module(args)
    assert first.returncode == 3, tail(first)
    assert "waiting for labels" in first.stdout and "labels/cycle_0.csv" in first.stdout
    with open(run_dir / "queries" / "cycle_0.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and set(rows[0]) == {"id", "shard", "key", "score", "original"}
    ids = [int(r["id"]) for r in rows]
    assert all(r["key"] == f"{int(r['id']):010d}" and r["shard"].endswith(".tar") for r in rows)
    assert all(r["original"] == f"train/{r['id']}" for r in rows)  # the source's own index

    again = run_module(args)  # still no labels: same pause, nothing trained twice
    assert again.returncode == 3 and not (run_dir / "cycles" / "cycle_0001").exists()

    labels_file = run_dir / "labels" / "cycle_0.csv"
    write_labels(labels_file, [(i, 0) for i in ids[:-1]] + [(ids[0], 1)])  # missing + duplicate
    bad = run_module(args)
    assert bad.returncode == 2
    assert f"duplicate id {ids[0]}" in bad.stderr and f"[{ids[-1]}]" in bad.stderr
    assert not (run_dir / "cycles" / "cycle_0001").exists()

    # A person may disagree with the shards: the import, not the shards, is what trains.
    human = {i: (int(load_labels(synthetic_dataset, "pool")[i]) + 1) % 5 for i in ids}
    write_labels(labels_file, sorted(human.items()))
    done = run_module(args)
    assert done.returncode == 0, tail(done)  # the last cycle needs no labels to finish
    with np.load(run_dir / "cycles" / "cycle_0001" / "labeled.npz") as lab:
        got = dict(zip(lab["ids"].tolist(), lab["labels"].tolist()))
    assert all(got[i] == human[i] for i in ids)
    assert (run_dir / "queries" / "cycle_1.csv").exists()  # the next batch to label, if extended
