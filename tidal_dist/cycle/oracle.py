"""Oracles: who labels the queried ids.

- simulated: the labels stored with the shards (every AL benchmark's setting).
- file: a person labels. Cycle K's queries are exported to `queries/cycle_K.csv` with their images
  in `queries/cycle_K/` (cycle/queries.py); the run stops (exit 3) until `labels/cycle_K.csv`
  (id,label: any column order, class names or indices) or `labels/cycle_K.json` (Label Studio's
  JSON or JSON-MIN export) exists, and re-running imports it. Cycle 0's initial set is queried
  the same way first, as `queries/initial.csv` / `labels/initial.csv` (cycle/initial.py).
- label_studio: the same queries pushed to a Label Studio project and pulled back
  (cycle/label_studio.py); its answers go through the same checks.
The import is all-or-nothing: any bad row rejects the whole file, naming every problem.
"""

from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tidal_dist.data.manifest import Manifest, known_label_mask, load_labels
from tidal_dist.job.errors import UserError


# Our id's column: Label Studio exports its own task id as `id` and ours (task data) as `tidal_id`.
ID_COLUMNS = ("tidal_id", "id")
LABELS_SUFFIXES = (".csv", ".json")


class LabelsPending(Exception):
    """The file oracle is waiting for a person: not an error, a pause."""


# The stage of cycle 0's initial set, which a person labels before any training: queries/initial.csv
# and labels/initial.csv, next to cycle K's queries/cycle_K.csv (labeled for cycle K+1).
INITIAL = "initial"
HUMAN_ORACLES = ("file", "label_studio")


def stage_name(cycle: int | str) -> str:
    return cycle if isinstance(cycle, str) else f"cycle_{cycle}"


# Byte-order marks, longest first (UTF-32's LE mark begins with UTF-16's). Spreadsheet programs
# write UTF-8 with a BOM ("CSV UTF-8") or UTF-16 with one ("Unicode text").
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))
READ_ENCODINGS = "UTF-8 (with or without a byte-order mark), or UTF-16/32 with a byte-order mark"


def describe(cycle: int | str) -> str:
    return "cycle 0's initial set" if cycle == INITIAL else f"cycle {cycle}"


def queries_path(run_dir: Path, cycle: int | str) -> Path:
    return run_dir / "queries" / f"{stage_name(cycle)}.csv"


def labels_path(run_dir: Path, cycle: int | str, suffix: str = ".csv") -> Path:
    return run_dir / "labels" / f"{stage_name(cycle)}{suffix}"


def existing_labels_file(run_dir: Path, cycle: int | str) -> Path | None:
    """labels/cycle_K.csv or labels/cycle_K.json (a Label Studio JSON / JSON-MIN export), if a
    person has written one; both at once is ambiguous and refused."""
    present = [p for p in (labels_path(run_dir, cycle, s) for s in LABELS_SUFFIXES) if p.exists()]
    if len(present) > 1:
        raise UserError(f"{describe(cycle)}: both {present[0]} and {present[1]} exist; keep the one "
                        f"to import and remove the other")
    return present[0] if present else None


@dataclass
class Answer:
    """One label for one task as a file states it, not yet checked."""

    where: str  # "line 4", "task 17 (annotation 3)": how the problem list names it
    raw_id: str
    raw_label: str | None  # None: the task was skipped / cancelled / left without a choice


def _read_text(path: Path) -> str:
    """The file's text, decoded by its byte-order mark (UTF-8 without one)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"labels file '{path}': cannot read it: {e}") from None
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"labels file '{path}': not {encoding} text (byte {e.start}); the "
                        f"encodings read are {READ_ENCODINGS}") from None


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _csv_answers(path: Path, text: str) -> tuple[list[Answer], list[str]]:
    """Our own `id,label` files, spreadsheet exports and Label Studio's CSV export: a header,
    columns in any order; our id is `tidal_id` when present (Label Studio's own `id` is its task
    id), else `id`; the label is the `label` column (our Label Studio choices are named so)."""
    # splitlines() takes CRLF (and CR) line ends as well as LF.
    lines = text.splitlines()
    header_line = lines[0] if lines else ""
    # Spreadsheets in some locales separate columns with ';' (or export tabs).
    delimiter = next((d for d in (",", ";", "\t") if d in header_line), ",")
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    id_col, label_col = _column(header, ID_COLUMNS), _column(header, ("label",))
    if id_col is None or label_col is None:
        raise UserError(f"labels file '{path}': expected a header line 'id,label' (columns in "
                        f"any order, others ignored; our id may be named 'tidal_id'; comma, "
                        f"semicolon or tab separated); found {header[:8]}")
    answers, problems = [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(id_col, label_col):
            problems.append(f"line {line_no}: expected {len(header)} columns "
                            f"({','.join(header)}), got {delimiter.join(row)!r}")
            continue
        extra = [c for c in row[len(rows[0]):] if c.strip()]
        if extra:
            problems.append(f"line {line_no}: {len(row)} fields under the {len(rows[0])}-column "
                            f"header {delimiter.join(rows[0])!r}: extra {extra!r}")
            continue
        label = row[label_col].strip()
        answers.append(Answer(f"line {line_no}", row[id_col].strip(), label or None))
    return answers, problems


def _choice(value) -> str | None:
    """A single choice as Label Studio writes it: a string, {"choices": [...]}, or a list."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        return str(value[0]) if len(value) == 1 else None if not value else "|".join(map(str, value))
    return None if value in (None, "") else str(value)


def label_studio_answers(tasks: list) -> tuple[list[Answer], list[str]]:
    """Label Studio's full JSON export (also what its API returns): tasks with `data.tidal_id`
    and `annotations`, each a `result` list whose `label` control holds the choice. A cancelled
    (skipped) annotation counts as no answer."""
    answers, problems = [], []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.append(f"task #{n}: not a Label Studio task (no 'data' object)")
            continue
        raw_id = str(task["data"].get("tidal_id", ""))
        where = f"task {task.get('id', '#' + str(n))}"
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        if not annotations:
            answers.append(Answer(where, raw_id, None))
        for a in annotations:
            choices = [r.get("value") for r in a.get("result") or []
                       if isinstance(r, dict) and r.get("from_name", "label") == "label"]
            label = None if a.get("was_cancelled") or not choices else _choice(choices[0])
            answers.append(Answer(f"{where} (annotation {a.get('id', '?')})", raw_id, label))
    return answers, problems


def _json_min_answers(records: list) -> tuple[list[Answer], list[str]]:
    """Label Studio's JSON-MIN export: one flat record per annotation, our id under `tidal_id`
    (its `id` is Label Studio's task id), the choice under `label`."""
    answers, problems = [], []
    for n, record in enumerate(records):
        if not isinstance(record, dict):
            problems.append(f"record #{n}: expected an object")
            continue
        raw_id = record.get("tidal_id", record.get("id", ""))
        where = f"record #{n}" + (f" (task {record['id']})" if "tidal_id" in record else "")
        answers.append(Answer(where, str(raw_id), _choice(record.get("label"))))
    return answers, problems


def _json_answers(path: Path, text: str) -> tuple[list[Answer], list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"labels file '{path}': not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise UserError(f"labels file '{path}': expected a JSON list of tasks (Label Studio's "
                        f"JSON or JSON-MIN export)")
    full = any(isinstance(t, dict) and "annotations" in t and isinstance(t.get("data"), dict)
               for t in data)
    return label_studio_answers(data) if full else _json_min_answers(data)


def check_answers(answers: list[Answer], problems: list[str], queried: np.ndarray,
                  manifest: Manifest) -> tuple[np.ndarray, list[str]]:
    """Labels for `queried` (same order), and every problem: an id not in the pool or not
    queried, an unknown class, a skipped task, annotators who disagree (the rule: all answers for
    an id must name the same class; identical repeats count once), a queried id with no answer."""
    class_index = {name: i for i, name in enumerate(manifest.class_names)}
    pool = manifest.split("pool")
    queried_set = set(queried.tolist())
    problems = list(problems)
    found: dict[int, tuple[int, str, str]] = {}  # id -> (label, as written, where)
    for a in answers:
        try:
            sample_id = int(a.raw_id)
        except ValueError:
            problems.append(f"{a.where}: id {a.raw_id!r} is not an integer")
            continue
        if not pool.first_id <= sample_id <= pool.last_id:
            problems.append(f"{a.where}: unknown id {sample_id} (the pool holds ids "
                            f"{pool.first_id}..{pool.last_id})")
            continue
        if sample_id not in queried_set:
            problems.append(f"{a.where}: id {sample_id} was not queried in this cycle")
            continue
        if a.raw_label is None:
            problems.append(f"{a.where}: id {sample_id} was skipped (no class chosen)")
            continue
        if a.raw_label in class_index:
            label = class_index[a.raw_label]
        else:
            try:
                label = int(a.raw_label)
            except ValueError:
                label = -1
            if not 0 <= label < manifest.num_classes:
                problems.append(f"{a.where}: id {sample_id}: label {a.raw_label!r} is out of "
                                f"range (0..{manifest.num_classes - 1} or a class name)")
                continue
        if sample_id in found and found[sample_id][0] != label:
            problems.append(f"{a.where}: duplicate id {sample_id} with a different label: "
                            f"{a.raw_label!r} here, {found[sample_id][1]!r} at "
                            f"{found[sample_id][2]} (annotators must agree)")
            continue
        found.setdefault(sample_id, (label, a.raw_label, a.where))
    missing = [i for i in queried.tolist() if i not in found]
    if missing:
        problems.append(f"{len(missing)} queried id(s) have no label: {missing[:10]}")
    labels = np.array([found[i][0] if i in found else -1 for i in queried.tolist()], dtype=np.int64)
    return labels, problems


def reject(source: str, problems: list[str]) -> UserError:
    lines = "\n  ".join(problems[:50])
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    return UserError(f"{source} rejected, nothing imported:\n  {lines}{more}")


def read_labels_file(path: Path, queried: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Labels for `queried` (same order) from a labels file: CSV with a header (our id,label, a
    spreadsheet's, Label Studio's CSV export) or Label Studio's JSON / JSON-MIN export; labels
    are class names or indices. Raises UserError listing every problem; nothing is changed."""
    text = _read_text(path)
    parse = _json_answers if path.suffix.lower() == ".json" else _csv_answers
    answers, problems = parse(path, text)
    labels, problems = check_answers(answers, problems, queried, manifest)
    if problems:
        raise reject(f"labels file '{path}'", problems)
    return labels


def label_queries(kind: str, run_dir: Path, cycle: int | str, manifest: Manifest, root: str,
                  ids: np.ndarray) -> np.ndarray:
    """Labels for the ids queried at `cycle` (or the INITIAL set); LabelsPending while a person
    has not answered. Only the simulated oracle reads the shards' labels."""
    if kind == "simulated":
        labels = load_labels(root, "pool")[ids - manifest.split("pool").first_id].astype(np.int64)
        unknown = ids[~known_label_mask(labels)]
        if len(unknown):  # cycle/plan.py refuses such a run up front; this guards the label read
            raise UserError(f"al.oracle=simulated: {len(unknown)} queried id(s) have no stored "
                            f"label (e.g. {unknown[:5].tolist()}); label them with al.oracle=file")
        return labels
    path = existing_labels_file(run_dir, cycle)
    if path is None:
        raise LabelsPending(
            f"{describe(cycle)}: {len(ids)} queries are in {queries_path(run_dir, cycle)} (images in "
            f"{queries_path(run_dir, cycle).with_suffix('')}/); write their labels to "
            f"{labels_path(run_dir, cycle)} (columns id,label), or put Label Studio's JSON / "
            f"JSON-MIN export at {labels_path(run_dir, cycle, '.json')}, and run the same "
            f"command again")
    return read_labels_file(path, ids, manifest)
