"""Oracles: the file oracle's export / import round trip, and every bad labels file."""

import csv
import json
import tarfile

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


def test_file_oracle_round_trip(synthetic_dataset, copy_dataset, tmp_path):
    """A person labels from the first query: cycle 0's initial set is asked for before any
    training, then each cycle's queries. The pool's stored labels are replaced by wrong ones:
    nothing on this path may read them."""
    root = copy_dataset(synthetic_dataset)
    truth = load_labels(root, "pool")
    np.save(root / "pool-labels.npy", (truth + 2) % 5)
    run_dir = tmp_path / "run"
    args = ["run", f"data.root={root}", "data.num_workers=0",
            "model.backbone=small_cnn", "model.width=4", "train.epochs=1", "train.batch_size=16",
            "al.initial=20", "al.budget=6", "al.cycles=2", "al.subset_size=40", "al.oracle=file",
            f"run.dir={run_dir}"]
    first = run_module(args)
    assert first.returncode == 3, tail(first)
    assert "waiting for labels" in first.stdout and "labels/initial.csv" in first.stdout
    assert not (run_dir / "cycles").exists() and not (run_dir / "work" / "cycle_0000").exists()
    initial = read_queries(run_dir, "initial", root)
    assert len(initial) == 20 and all(r["predicted"] == "" for r in initial)
    names = load_manifest(root).class_names
    write_labels(run_dir / "labels" / "initial.csv",
                 [(names[truth[int(r["id"])]], r["id"]) for r in initial], header=("label", "id"))

    second = run_module(args)  # trains cycle 0 on the person's labels, then asks for its queries
    assert second.returncode == 3, tail(second)
    assert "labels/cycle_0.csv" in second.stdout
    with np.load(run_dir / "cycles" / "cycle_0000" / "labeled.npz") as lab:
        assert sorted(lab["ids"].tolist()) == sorted(int(r["id"]) for r in initial)
        assert np.array_equal(lab["labels"], truth[lab["ids"]])
    rows = read_queries(run_dir, "cycle_0", root)
    assert len(rows) == 6 and all(r["predicted_name"] == names[int(r["predicted"])] for r in rows)
    with np.load(run_dir / "cycles" / "cycle_0000" / "queried.npz") as q:
        assert [int(r["id"]) for r in rows] == q["ids"].tolist()
        assert [float(r["score"]) for r in rows] == q["reported"].tolist()
    ids = [int(r["id"]) for r in rows]

    again = run_module(args)  # still no labels: same pause, nothing trained twice
    assert again.returncode == 3 and not (run_dir / "cycles" / "cycle_0001").exists()

    labels_file = run_dir / "labels" / "cycle_0.csv"
    write_labels(labels_file, [(i, 0) for i in ids[:-1]] + [(ids[0], 1)])  # missing + duplicate
    bad = run_module(args)
    assert bad.returncode == 2
    assert f"duplicate id {ids[0]}" in bad.stderr and f"[{ids[-1]}]" in bad.stderr
    assert not (run_dir / "cycles" / "cycle_0001").exists()

    # A person may disagree with the shards: the import, not the shards, is what trains.
    human = {i: (int(truth[i]) + 1) % 5 for i in ids}
    write_labels(labels_file, sorted(human.items()))
    done = run_module(args)
    assert done.returncode == 0, tail(done)  # the last cycle needs no labels to finish
    with np.load(run_dir / "cycles" / "cycle_0001" / "labeled.npz") as lab:
        got = dict(zip(lab["ids"].tolist(), lab["labels"].tolist()))
    assert all(got[i] == human[i] for i in ids)
    assert (run_dir / "queries" / "cycle_1.csv").exists()  # the next batch to label, if extended


def read_queries(run_dir, stage, root):
    """The rows of queries/<stage>.csv, each image checked against the shard it came from."""
    with open(run_dir / "queries" / f"{stage}.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["id", "shard", "key", "score", "original_key", "image",
                                      "predicted", "predicted_name"]
    for r in rows:
        assert r["key"] == f"{int(r['id']):010d}"  # its key in tidal_dist's shards
        assert r["original_key"] == f"train/{r['id']}"  # the source's own index
        assert r["image"] == f"{stage}/{r['id']}_train_{r['id']}.png"
        with tarfile.open(root / r["shard"]) as tar:
            stored = tar.extractfile(f"{r['key']}.png").read()
        assert (run_dir / "queries" / r["image"]).read_bytes() == stored
    assert len(list((run_dir / "queries" / stage).iterdir())) == len(rows)
    return rows


def ls_task(task_id, tidal_id, *choices, cancelled=False):
    """A task as Label Studio's JSON export writes it, one annotation per choice."""
    return {"id": task_id, "data": {"image": f"/data/local-files/?d=q/{tidal_id}.png",
                                    "tidal_id": tidal_id},
            "annotations": [{"id": 100 * task_id + n, "completed_by": 1, "was_cancelled": cancelled,
                             "result": [{"from_name": "label", "to_name": "image",
                                         "type": "choices", "value": {"choices": [c]}}]}
                            for n, c in enumerate(choices)],
            "predictions": []}


def test_label_studio_exports_are_read_directly(tmp_path, manifest):
    names = manifest.class_names
    want = [3, 0, 2]  # for QUERIED 4, 9, 17
    full = tmp_path / "full.json"
    full.write_text(json.dumps([ls_task(1, 17, names[2]), ls_task(2, 4, names[3], names[3]),
                                ls_task(3, 9, names[0])]))
    assert read_labels_file(full, QUERIED, manifest).tolist() == want
    # JSON-MIN: its `id` is Label Studio's task id; ours is `tidal_id`
    flat = tmp_path / "min.json"
    flat.write_text(json.dumps([{"image": "x", "id": 1, "tidal_id": 17, "label": names[2],
                                 "annotator": 1, "lead_time": 1.5},
                                {"image": "x", "id": 2, "tidal_id": 4, "label": names[3]},
                                {"image": "x", "id": 3, "tidal_id": 9,
                                 "label": {"choices": [names[0]]}}]))
    assert read_labels_file(flat, QUERIED, manifest).tolist() == want
    # CSV export: many columns, in Label Studio's order, label not second
    p = write_labels(tmp_path / "ls.csv",
                     [(7, "", 1, 1, "x.png", 3, names[2], 17), (8, "", 2, 2, "y.png", 1,
                      names[3], 4), (9, "", 3, 3, "z.png", 2, names[0], 9)],
                     header=("annotation_id", "annotator", "created_at", "id", "image",
                             "lead_time", "label", "tidal_id"))
    assert read_labels_file(p, QUERIED, manifest).tolist() == want
    # our own file, columns swapped
    p = write_labels(tmp_path / "swapped.csv", [(names[2], 17), (3, 4), (names[0], 9)],
                     header=("label", "id"))
    assert read_labels_file(p, QUERIED, manifest).tolist() == want


def test_a_damaged_export_names_every_problem(tmp_path, manifest):
    names = manifest.class_names
    export = tmp_path / "bad.json"
    export.write_text(json.dumps([
        ls_task(1, 4, "zebra"),                   # a class the dataset does not have
        ls_task(2, 9, names[0], names[1]),        # two annotators disagree
        ls_task(3, 5, names[0]),                  # an id that was not queried
        ls_task(4, 17, names[0], cancelled=True),  # skipped by the labeler
    ]))
    with pytest.raises(UserError) as e:
        read_labels_file(export, QUERIED, manifest)
    message = str(e.value)
    assert "nothing imported" in message
    assert "task 1 (annotation 100): id 4: label 'zebra' is out of range" in message
    assert "task 2 (annotation 201): duplicate id 9 with a different label" in message
    assert "task 3 (annotation 300): id 5 was not queried" in message
    assert "task 4 (annotation 400): id 17 was skipped" in message
    assert "2 queried id(s) have no label: [4, 17]" in message
    # a task missing from the export altogether
    export.write_text(json.dumps([ls_task(1, 4, names[0]), ls_task(2, 9, names[0])]))
    with pytest.raises(UserError, match=r"1 queried id\(s\) have no label: \[17\]"):
        read_labels_file(export, QUERIED, manifest)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"tasks": []}', "expected a JSON list of tasks"),
])
def test_json_that_is_not_an_export(tmp_path, manifest, text, message):
    p = tmp_path / "l.json"
    p.write_text(text)
    with pytest.raises(UserError, match=message):
        read_labels_file(p, QUERIED, manifest)
