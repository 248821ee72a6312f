"""A Hugging Face dataset on disk as a source: `hf:DIR`, read offline with pyarrow.

DIR is one of
    a `DatasetDict.save_to_disk` folder   dataset_dict.json + one folder per split (Arrow files)
    a `Dataset.save_to_disk` folder       state.json + Arrow files: the pool only
    a folder of parquet files             *.parquet at any depth (the Hub's layout); a file is in
                                          split S when a folder on its path is named S or its
                                          name starts with "S-" or "S_"
The pool is the `train` split (or the only one); the evaluation split is `test`, else
`validation`, if there is one (`--eval-source hf:DIR2` takes DIR2's pool instead).

Columns: the image column (`image_key`; default: the first `Image` feature, else a column named
image or img) holds {bytes, path} structs, whose bytes are kept as they are (a row with only a
path reads that file, relative to DIR). The label column (`label`; default: the first
`ClassLabel` feature, else a column named label; `none`: no labels) may hold integers or names;
a ClassLabel's names are the class names, and its -1 or a null is an unknown label. A sample's
key is `SPLIT/ROW`, the row of that split as `datasets.load_from_disk(DIR)[SPLIT][ROW]` or the
parquet files in name order give it.

Unreadable images, and evaluation rows without a label, are errors naming the file and row;
`skip_bad` leaves them out and counts them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from tidal_dist.data.sources import (SPLITS, CollectionSource, PixelStatsSample, SourceSpec, class_indices,
                                     image_size_of, label_value, parse_spec, read_class_names,
                                     resolved_against, shared_size)
from tidal_dist.job.errors import UserError

EVAL_SPLIT_NAMES = ("test", "validation", "valid", "val")
BATCH_ROWS = 256


@dataclass(frozen=True)
class _Table:
    """One Arrow or parquet file of a split."""

    path: Path
    kind: str  # 'arrow' (save_to_disk's IPC stream files) | 'parquet'

    def schema(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.kind == "parquet":
            return pq.read_schema(self.path)
        with pa.memory_map(str(self.path)) as source:
            return pa.ipc.open_stream(source).schema

    def batches(self, columns: list[str]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            if self.kind == "parquet":
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=BATCH_ROWS, columns=columns)
                return
            with pa.memory_map(str(self.path)) as source:
                for batch in pa.ipc.open_stream(source):
                    yield batch.select(columns)
        except (OSError, pa.ArrowException) as e:
            raise UserError(f"'{self.path}' cannot be read as {self.kind}: {e}") from None


def _arrow_files(folder: Path) -> list[_Table]:
    state = folder / "state.json"
    try:
        files = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"'{state}' is not a save_to_disk state file ({e})") from None
    return [_Table(folder / name, "arrow") for name in files]


def _parquet_split(relative: Path) -> str | None:
    for part in relative.parts[:-1]:
        if part in ("train", *EVAL_SPLIT_NAMES):
            return part
    name = relative.name
    return next((s for s in ("train", *EVAL_SPLIT_NAMES) if name.startswith((s + "-", s + "_"))), None)


def find_splits(root: Path) -> dict[str, list[_Table]]:
    """The dataset's splits by name, each a list of files in row order."""
    if not root.is_dir():
        raise UserError(f"Hugging Face dataset folder '{root}' does not exist{resolved_against(root)}")
    if (root / "dataset_dict.json").is_file():
        try:
            names = json.loads((root / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"'{root / 'dataset_dict.json'}' cannot be read ({e})") from None
        return {name: _arrow_files(root / name) for name in names}
    if (root / "state.json").is_file():
        return {"train": _arrow_files(root)}
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise UserError(f"'{root}' is not a Hugging Face dataset on disk: no dataset_dict.json "
                        f"or state.json (save_to_disk) and no *.parquet file")
    splits: dict[str, list[_Table]] = {}
    for path in files:
        split = _parquet_split(path.relative_to(root)) or "train"
        splits.setdefault(split, []).append(_Table(path, "parquet"))
    return splits


def _features(table: _Table) -> dict[str, Any]:
    metadata = table.schema().metadata or {}
    try:
        return json.loads(metadata[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        return {}  # plain parquet: columns are found by name


class HfSource(CollectionSource):
    """Rows of Arrow / parquet files; see the module docstring."""

    def __init__(self, spec: SourceSpec, skip_bad: bool, eval_source: str | None = None,
                 image_key: str | None = None, label: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(spec, skip_bad)
        self.root = Path(spec.path)
        found = find_splits(self.root)
        pool_name = "train" if "train" in found else next(iter(found))
        self.tables = {"pool": found[pool_name], "test": []}
        self.split_names = {"pool": pool_name, "test": None}
        if eval_source is not None:
            eval_spec = parse_spec(eval_source)
            if eval_spec.kind != "hf":
                raise UserError(f"--eval-source '{eval_source}': expected hf:DIR with an hf: source")
            other = find_splits(Path(eval_spec.path))
            name = "train" if "train" in other else next(iter(other))
            self.tables["test"], self.split_names["test"] = other[name], name
        else:
            name = next((n for n in EVAL_SPLIT_NAMES if n in found and n != pool_name), None)
            if name is not None:
                self.tables["test"], self.split_names["test"] = found[name], name
        features = _features(self.tables["pool"][0])
        columns = self.tables["pool"][0].schema().names
        self.image_column = image_key or next(
            (c for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"),
            next((c for c in ("image", "img") if c in columns), None))
        if self.image_column not in columns:
            raise UserError(f"Hugging Face dataset '{self.root}': no image column "
                            f"{self.image_column!r} (columns: {', '.join(columns)}); set --image-key")
        class_label = next((c for c, f in features.items()
                            if isinstance(f, dict) and f.get("_type") == "ClassLabel"), None)
        if label == "none":
            self.label_column = None
        else:
            self.label_column = label or class_label or ("label" if "label" in columns else None)
            if self.label_column is not None and self.label_column not in columns:
                raise UserError(f"Hugging Face dataset '{self.root}': no label column "
                                f"{self.label_column!r} (columns: {', '.join(columns)}); set "
                                f"--label COLUMN or --label none")
        names = read_class_names(classes) if classes else None
        if names is None and self.label_column is not None:
            feature = features.get(self.label_column)
            if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
                names = [str(n) for n in feature["names"]]
        self._scan(names)

    def _rows(self, split: str) -> Iterator[tuple[str, str, Any, bytes | None]]:
        """(key, where, raw label, image bytes or None when unreadable) of every row."""
        columns = [self.image_column] + ([self.label_column] if self.label_column else [])
        row = 0
        for table in self.tables[split]:
            for batch in table.batches(columns):
                images = batch.column(0).to_pylist()
                labels = batch.column(1).to_pylist() if self.label_column else [None] * len(images)
                for image, raw in zip(images, labels):
                    key = f"{self.split_names[split]}/{row}"
                    yield key, f"'{table.path}' row {key}", raw, self._image_bytes(image)
                    row += 1

    def _image_bytes(self, cell: Any) -> bytes | None:
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return cell["bytes"]
            if cell.get("path"):
                path = Path(cell["path"])
                path = path if path.is_absolute() else self.root / path
                return path.read_bytes() if path.is_file() else None
        return None

    def _scan(self, names: list[str] | None) -> None:
        """Check every row once: labels, readable images, statistics of the pool's images."""
        stats = PixelStatsSample(self.mode)
        sizes: set[tuple[int, int]] = set()
        keys: dict[str, list[str]] = {}
        raw: dict[str, list[int | str | None]] = {}
        self.bad: dict[str, set[str]] = {}
        for split in SPLITS:
            keys[split], raw[split], self.bad[split] = [], [], set()
            for key, where, value, image in self._rows(split):
                value = label_value(value)
                if isinstance(value, int) and value < 0:  # a ClassLabel's missing label
                    value = None
                size = image_size_of(image) if image is not None else None
                problem = ("has no readable image" if size is None else
                           "has no label; the evaluation split needs one"
                           if split == "test" and value is None and self.label_column else None)
                if problem is not None:
                    if not self.skip_bad:
                        raise UserError(f"{where} {problem}; fix it, or prepare with --skip-bad to "
                                        f"leave such rows out")
                    self.bad[split].add(key)
                    self._skipped += 1
                    continue
                sizes.add(size)
                if split == "pool":
                    stats.offer(image)
                keys[split].append(key)
                raw[split].append(value)
        if not keys["pool"]:
            raise UserError(f"Hugging Face dataset '{self.root}': no usable row in the pool")
        self.class_names, self.labels = class_indices(raw, keys, names, f"source 'hf:{self.root}'")
        self.mean, self.std = stats.mean_std()
        self.image_size = shared_size(sizes)
        self.keys = keys

    def split_length(self, split: str) -> int:
        return len(self.keys[split])

    def keyed_samples(self, split: str) -> Iterator[tuple[str, int, bytes, str]]:
        index = 0
        for key, _where, _raw, image in self._rows(split):
            if key in self.bad[split]:
                continue
            with Image.open(io.BytesIO(image)) as decoded:
                ext = (decoded.format or "bin").lower()
            yield key, self.labels[split][index], image, "jpg" if ext == "jpeg" else ext
            index += 1
