"""Oracles: who labels the queried ids.

- simulated: the labels stored with the shards (every AL benchmark's setting).
- file: a person labels. Cycle K's queries are exported to `queries/cycle_K.csv` (id, shard, key,
  score, original: the sample's file or key in the user's data); the run stops until
  `labels/cycle_K.csv` (id,label) exists, and re-running imports it.
  The import is all-or-nothing: any bad row rejects the whole file, naming every problem.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import numpy as np

from tidal_dist.data.manifest import Manifest, known_label_mask, load_labels, original_keys
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_text


class LabelsPending(Exception):
    """The file oracle is waiting for a person: not an error, a pause."""


def queries_path(run_dir: Path, cycle: int) -> Path:
    return run_dir / "queries" / f"cycle_{cycle}.csv"


def labels_path(run_dir: Path, cycle: int) -> Path:
    return run_dir / "labels" / f"cycle_{cycle}.csv"


def export_queries(run_dir: Path, cycle: int, manifest: Manifest, ids: np.ndarray,
                   scores: np.ndarray, root: str | None = None) -> Path:
    """`original`: the sample's key in the user's data (an image folder's relative path, a
    WebDataset `__key__`, a Hugging Face row), read from the dataset at `root`; the 10-digit
    id for a dataset prepared before keys were recorded."""
    split = manifest.split("pool")
    originals = (original_keys(root, "pool", ids, manifest) if root is not None
                 else [f"{i:010d}" for i in ids.tolist()])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "shard", "key", "score", "original"])
    for i, s, original in zip(ids.tolist(), scores.tolist(), originals):
        key = original if manifest.in_place else f"{i:010d}"  # the sample's key in its shard
        w.writerow([i, split.shard_of(i).url, key, repr(float(s)), original])
    return atomic_write_text(queries_path(run_dir, cycle), buf.getvalue())


# Byte-order marks, longest first (UTF-32's LE mark begins with UTF-16's). Spreadsheet programs
# write UTF-8 with a BOM ("CSV UTF-8") or UTF-16 with one ("Unicode text").
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))
READ_ENCODINGS = "UTF-8 (with or without a byte-order mark), or UTF-16/32 with a byte-order mark"


def _label_lines(path: Path) -> list[str]:
    """The file's lines, decoded by its byte-order mark (UTF-8 without one); splitlines()
    takes CRLF (and CR) line ends as well as LF."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"labels file '{path}': cannot read it: {e}") from None
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding).splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"labels file '{path}': not {encoding} text (byte {e.start}); the "
                        f"encodings read are {READ_ENCODINGS}") from None


def read_labels_file(path: Path, queried: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Labels for `queried` (same order) from a CSV with columns id,label; label may be a class
    index or a class name. Raises UserError listing every problem; nothing is changed."""
    class_index = {name: i for i, name in enumerate(manifest.class_names)}
    pool = manifest.split("pool")
    queried_set = set(queried.tolist())
    problems: list[str] = []
    found: dict[int, int] = {}
    lines = _label_lines(path)
    header = lines[0] if lines else ""
    # Spreadsheets in some locales separate columns with ';' (or export tabs).
    delimiter = next((d for d in (",", ";", "\t") if d in header), ",")
    rows = list(csv.reader(lines, delimiter=delimiter))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["id", "label"]:
        raise UserError(f"labels file '{path}': expected a header line 'id,label' (comma, "
                        f"semicolon or tab separated)")
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2:
            problems.append(f"line {line_no}: expected 'id,label', got {','.join(row)!r}")
            continue
        extra = [c for c in row[len(rows[0]):] if c.strip()]
        if extra:
            problems.append(f"line {line_no}: {len(row)} fields under the {len(rows[0])}-column "
                            f"header {delimiter.join(rows[0])!r}: extra {extra!r}")
            continue
        raw_id, raw_label = row[0].strip(), row[1].strip()
        try:
            sample_id = int(raw_id)
        except ValueError:
            problems.append(f"line {line_no}: id {raw_id!r} is not an integer")
            continue
        if not pool.first_id <= sample_id <= pool.last_id:
            problems.append(f"line {line_no}: unknown id {sample_id} (the pool holds ids "
                            f"{pool.first_id}..{pool.last_id})")
            continue
        if sample_id not in queried_set:
            problems.append(f"line {line_no}: id {sample_id} was not queried in this cycle")
            continue
        if sample_id in found:
            problems.append(f"line {line_no}: duplicate id {sample_id}")
            continue
        if raw_label in class_index:
            label = class_index[raw_label]
        else:
            try:
                label = int(raw_label)
            except ValueError:
                label = -1
            if not 0 <= label < manifest.num_classes:
                problems.append(f"line {line_no}: id {sample_id}: label {raw_label!r} is out of "
                                f"range (0..{manifest.num_classes - 1} or a class name)")
                continue
        found[sample_id] = label
    missing = [i for i in queried.tolist() if i not in found]
    if missing:
        problems.append(f"{len(missing)} queried id(s) have no label: {missing[:10]}")
    if problems:
        lines = "\n  ".join(problems[:50])
        raise UserError(f"labels file '{path}' rejected, nothing imported:\n  {lines}")
    return np.array([found[i] for i in queried.tolist()], dtype=np.int64)


def label_queries(kind: str, run_dir: Path, cycle: int, manifest: Manifest, root: str,
                  ids: np.ndarray) -> np.ndarray:
    """Labels for the ids queried at `cycle`; LabelsPending while a person has not answered."""
    if kind == "simulated":
        labels = load_labels(root, "pool")[ids - manifest.split("pool").first_id].astype(np.int64)
        unknown = ids[~known_label_mask(labels)]
        if len(unknown):  # cycle/plan.py refuses such a run up front; this guards the label read
            raise UserError(f"al.oracle=simulated: {len(unknown)} queried id(s) have no stored "
                            f"label (e.g. {unknown[:5].tolist()}); label them with al.oracle=file")
        return labels
    path = labels_path(run_dir, cycle)
    if not path.exists():
        raise LabelsPending(
            f"cycle {cycle}: {len(ids)} queries are in {queries_path(run_dir, cycle)}; write their "
            f"labels to {path} (columns id,label) and run the same command again")
    return read_labels_file(path, ids, manifest)
