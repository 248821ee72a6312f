"""The manifest of a prepared dataset: what `prepare` wrote, and the checks on it.

A prepared folder holds, per split ('pool', 'test'):
    {split}-000000.tar ...   WebDataset shards; sample key = the global id as 10 digits
    {split}-labels.npy       int64 labels, index = id - first_id
    {split}.wids.json        the wids shard index (for wids.ShardListDataset and its tools)
    {split}-keys.json        each sample's original key or relative file path (JSON list,
                             index = id - first_id): how a user finds their file from an id
and manifest.json, written last: its presence marks the folder complete.

Known labels: a label of -1 (UNKNOWN_LABEL) means nobody has labeled that sample yet (an unlabeled
or partly labeled pool); the split's `num_labeled` counts the others. An older manifest without
`num_labeled` holds labels for every sample.

Shards used in place (`prepare --source wds:PATTERN`): `shard_keys` is 'original', the shards are
the user's own files (their keys are the user's, ids follow the file order, a shard's
`skipped_positions` are samples left out with --skip-bad), the label is read from the labels file
and the image is the first of `image_keys` that a sample holds. A manifest may name a
`base_url` where the shards are served from instead (object storage, HTTP; `prepare --base-url`):
the shard urls are then relative to it, see data/locations.py.

Global ids are contiguous per split (pool 0..N_pool-1, then test), so id -> shard is a binary search
over the shards' first ids and id -> position in the labels array is id - first_id.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tidal_dist.job.errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
UNKNOWN_LABEL = -1


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    url: str  # the file name, relative to the manifest's folder (or to the manifest's base_url)
    nsamples: int
    first_id: int
    last_id: int
    sha256: str
    bytes: int
    # in-place shards: tar positions of samples left out (--skip-bad); the tar holds
    # nsamples + len(skipped_positions) samples
    skipped_positions: tuple[int, ...] = ()

    def position_of(self, sample_id: int) -> int:
        """The tar position of `sample_id` (its index among the shard's samples)."""
        position = sample_id - self.first_id
        for skipped in self.skipped_positions:  # ascending
            if skipped <= position:
                position += 1
        return position

    @property
    def tar_samples(self) -> int:
        return self.nsamples + len(self.skipped_positions)


@dataclass(frozen=True)
class SplitInfo:
    name: str
    shards: tuple[ShardInfo, ...]
    num_samples: int
    first_id: int
    last_id: int  # first_id - 1 for an empty split
    label_histogram: list[int]
    labels_file: str
    labels_sha256: str
    wids_index: str
    keys_file: str | None = None  # original keys / relative paths, index = id - first_id
    keys_sha256: str | None = None
    num_labeled: int | None = None  # samples with a known label; None: all of them (older manifests)
    _shard_starts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_shard_starts", [s.first_id for s in self.shards])

    @property
    def labeled_count(self) -> int:
        return self.num_samples if self.num_labeled is None else self.num_labeled

    @property
    def fully_labeled(self) -> bool:
        return self.labeled_count == self.num_samples

    def ids(self) -> np.ndarray:
        return np.arange(self.first_id, self.last_id + 1, dtype=np.int64)

    def contains(self, sample_id: int) -> bool:
        return self.first_id <= sample_id <= self.last_id

    def shard_paths(self, root: str | Path) -> list[Path]:
        return [Path(root) / s.url for s in self.shards]

    def shard_index_of(self, sample_id: int) -> int:
        if not self.contains(sample_id):
            raise UserError(f"id {sample_id} is not in split '{self.name}' "
                            f"(ids {self.first_id}..{self.last_id})")
        return bisect.bisect_right(self._shard_starts, sample_id) - 1

    def shard_of(self, sample_id: int) -> ShardInfo:
        return self.shards[self.shard_index_of(sample_id)]


@dataclass(frozen=True)
class Manifest:
    format_version: int
    dataset: str
    source: str  # the spec as given to prepare
    source_canonical: str  # the spec with defaults and absolute paths filled in
    options: dict[str, Any]  # shard_size, skip_bad
    class_names: list[str]
    num_classes: int
    mode: str  # 'L' or 'RGB'
    image_size: tuple[int, int] | None  # (H, W); None when sizes vary
    mean: list[float]
    std: list[float]
    skipped: int  # unreadable images left out (skip_bad)
    splits: dict[str, SplitInfo]
    base_url: str | None = None  # where the shards are served from; None: next to this manifest
    shard_keys: str = "id"  # 'id': keys are the 10-digit ids; 'original': the user's shards in place
    image_keys: tuple[str, ...] | None = None  # 'original': the members tried as the image, in order

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise UserError(f"dataset '{self.dataset}' has no split '{name}' "
                            f"(splits: {', '.join(self.splits)})")
        return self.splits[name]

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for split in data["splits"].values():
            split.pop("_shard_starts", None)
            _drop_defaults(split, ("keys_file", "keys_sha256", "num_labeled"), None)
            for shard in split["shards"]:
                shard["skipped_positions"] = list(shard["skipped_positions"])
                _drop_defaults(shard, ("skipped_positions",), [])
        data["image_size"] = list(self.image_size) if self.image_size else None
        if data["image_keys"] is not None:
            data["image_keys"] = list(data["image_keys"])
        # Fields left at their defaults are not written: a dataset that uses none of them has
        # the manifest earlier versions wrote (a local dataset has no base_url, and so on).
        _drop_defaults(data, ("base_url", "image_keys"), None)
        _drop_defaults(data, ("shard_keys",), "id")
        return data

    @property
    def in_place(self) -> bool:
        """The shards are the user's own, indexed where they are."""
        return self.shard_keys == "original"

    @property
    def pool_fully_labeled(self) -> bool:
        return self.split("pool").fully_labeled

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Manifest:
        fields = dict(data)
        fields["splits"] = {
            name: SplitInfo(**{**split, "shards": tuple(
                ShardInfo(**{**s, "skipped_positions": tuple(s.get("skipped_positions", ()))})
                for s in split["shards"])})
            for name, split in data["splits"].items()
        }
        fields["image_size"] = tuple(data["image_size"]) if data["image_size"] else None
        if fields.get("image_keys") is not None:
            fields["image_keys"] = tuple(fields["image_keys"])
        return Manifest(**fields)


def _drop_defaults(data: dict[str, Any], names: tuple[str, ...], default: Any) -> None:
    for name in names:
        if data.get(name) == default:
            del data[name]


def load_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        if Path(str(root) + ".partial").exists():
            hint = " (an interrupted prepare? run it again)"
        else:
            hint = (f"; write one there with `tidal-dist prepare --source SRC --out {root}` "
                    f"(the README lists the sources), or give the folder of a prepared one")
        where = "" if Path(root).is_absolute() else f" (a relative path, looked up in {Path.cwd()})"
        raise UserError(f"'{path}' does not exist{where}: '{root}' is not a dataset written by "
                        f"`tidal-dist prepare`{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"manifest '{path}' cannot be read: {e}") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise UserError(f"manifest '{path}': format_version {version!r}, this version reads "
                        f"{FORMAT_VERSION}; prepare the dataset again")
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"manifest '{path}' is malformed ({type(e).__name__}: {e})") from None


def load_labels(root: str | Path, split: str, manifest: Manifest | None = None) -> np.ndarray:
    """Labels of `split`, int64, index = id - first_id."""
    info = (manifest or load_manifest(root)).split(split)
    path = Path(root) / info.labels_file
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"labels file '{path}' cannot be read: {e}") from None
    if labels.shape != (info.num_samples,) or labels.dtype != np.int64:
        raise UserError(f"labels file '{path}': shape {labels.shape} {labels.dtype}, the manifest "
                        f"expects ({info.num_samples},) int64")
    return labels


def load_keys(root: str | Path, split: str, manifest: Manifest | None = None) -> list[str] | None:
    """Each sample's original key or relative file path (index = id - first_id); None for a
    dataset prepared before keys were recorded."""
    info = (manifest or load_manifest(root)).split(split)
    if info.keys_file is None:
        return None
    path = Path(root) / info.keys_file
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"keys file '{path}' cannot be read: {e}") from None
    if not isinstance(keys, list) or len(keys) != info.num_samples:
        raise UserError(f"keys file '{path}': expected a list of {info.num_samples} keys")
    return keys


def original_keys(root: str | Path, split: str, ids: np.ndarray,
                  manifest: Manifest | None = None) -> list[str]:
    """The original key of each id (the 10-digit id itself for a dataset without a keys file)."""
    manifest = manifest or load_manifest(root)
    keys = load_keys(root, split, manifest)
    first = manifest.split(split).first_id
    ids = np.asarray(ids, dtype=np.int64)
    if keys is None:
        return [f"{i:010d}" for i in ids.tolist()]
    return [keys[i - first] for i in ids.tolist()]


class KeyCursor:
    """The original keys of ascending ids, read forward through the keys file in chunks: flat
    memory at any pool size, where load_keys holds every key (a million keys are ~70 MB of
    Python strings). Each call's ids must come after the previous call's."""

    CHUNK = 1 << 20  # characters read at a time

    def __init__(self, root: str | Path, split: str, manifest: Manifest | None = None) -> None:
        info = (manifest or load_manifest(root)).split(split)
        self.first = info.first_id
        self.count = info.num_samples
        self.path = None if info.keys_file is None else Path(root) / info.keys_file
        self.stream = self._keys() if self.path is not None else None
        self.position = 0  # keys read so far; the last one read is self.last
        self.last = ""

    def keys(self, ids: np.ndarray) -> list[str]:
        ids = np.asarray(ids, dtype=np.int64)
        if self.stream is None:
            return [f"{i:010d}" for i in ids.tolist()]
        out = []
        for i in ids.tolist():
            index = i - self.first
            if index < self.position - 1 or not 0 <= index < self.count:
                raise ValueError(f"KeyCursor: id {i} is out of order or outside the split")
            while self.position <= index:
                self.last = next(self.stream, None)
                if self.last is None:
                    raise UserError(f"keys file '{self.path}': ends before id {i}; expected a "
                                    f"list of {self.count} keys")
                self.position += 1
            out.append(self.last)
        return out

    def _keys(self):
        """Each string of the file's JSON list, in order, decoded a chunk of text at a time."""
        decoder = json.JSONDecoder()

        def bad(why: str) -> UserError:
            return UserError(f"keys file '{self.path}': {why}; expected a JSON list of "
                             f"{self.count} keys")

        try:
            f = open(self.path, encoding="utf-8")
        except OSError as e:
            raise UserError(f"keys file '{self.path}' cannot be read: {e}") from None
        with f:
            text, pos, eof = "", 0, False
            expect = "["  # then: an item or "]"; after an item: "," or "]"
            while True:
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
                if pos == len(text):
                    if eof:
                        raise bad("the list is not closed")
                    chunk = f.read(self.CHUNK)
                    text, pos, eof = text[pos:] + chunk, 0, not chunk
                    continue
                c = text[pos]
                if expect == "[":
                    if c != "[":
                        raise bad("not a list")
                    expect, pos = "item or ]", pos + 1
                elif c == "]" and expect != "item":
                    return
                elif expect == ", or ]":
                    if c != ",":
                        raise bad(f"unexpected {c!r} after key {self.position}")
                    expect, pos = "item", pos + 1
                else:
                    if c != '"':
                        raise bad(f"key {self.position} is not a string")
                    try:
                        key, end = decoder.raw_decode(text, pos)
                    except json.JSONDecodeError as e:
                        if eof:
                            raise bad(str(e)) from None
                        chunk = f.read(self.CHUNK)  # a key cut at the chunk's end: read on
                        text, pos, eof = text[pos:] + chunk, 0, not chunk
                        continue
                    yield key
                    expect, pos = ", or ]", end


def known_label_mask(labels: np.ndarray) -> np.ndarray:
    """True where a sample's label is known (not UNKNOWN_LABEL)."""
    return np.asarray(labels) >= 0


def local_shard_problem(path: Path, shard: ShardInfo) -> str | None:
    """What is wrong with a local shard file (None: it matches the manifest). Reads all of it."""
    if not path.is_file():
        return f"shard '{path}' is missing"
    if path.stat().st_size != shard.bytes:
        return f"shard '{path}' has {path.stat().st_size} bytes, the manifest says {shard.bytes}"
    if file_sha256(path) != shard.sha256:
        return f"shard '{path}': sha256 does not match the manifest (corrupted)"
    return None


def verify(root: str | Path,
           shard_problem: Callable[[ShardInfo], str | None] | None = None) -> list[str]:
    """Every problem found with the files the manifest lists (empty list: all good).

    Reads every byte of every shard: as slow as reading the dataset once. `shard_problem` checks
    one shard where it is served (data.locations.ShardSource.problem); by default the shards are
    the files next to the manifest.
    """
    root = Path(root)
    manifest = load_manifest(root)
    if shard_problem is None:
        shard_problem = lambda shard: local_shard_problem(root / shard.url, shard)  # noqa: E731
    problems = []
    for split in manifest.splits.values():
        problems += [p for p in map(shard_problem, split.shards) if p is not None]
        labels_path = root / split.labels_file
        if not labels_path.is_file():
            problems.append(f"labels file '{labels_path}' is missing")
        elif file_sha256(labels_path) != split.labels_sha256:
            problems.append(f"labels file '{labels_path}': sha256 does not match the manifest")
        if split.keys_file is not None:
            keys_path = root / split.keys_file
            if not keys_path.is_file():
                problems.append(f"keys file '{keys_path}' is missing")
            elif file_sha256(keys_path) != split.keys_sha256:
                problems.append(f"keys file '{keys_path}': sha256 does not match the manifest")
        if not (root / split.wids_index).is_file():
            problems.append(f"wids index '{root / split.wids_index}' is missing")
    return problems


def summary(manifest: Manifest) -> str:
    """A human-readable description, for `tidal-dist inspect`."""
    size = "x".join(str(v) for v in manifest.image_size) if manifest.image_size else "variable"
    lines = [
        f"dataset   {manifest.dataset}  (source {manifest.source_canonical})",
        f"images    {manifest.mode}, {size}; mean {_floats(manifest.mean)} std {_floats(manifest.std)}",
        f"classes   {manifest.num_classes}: {_shorten(manifest.class_names)}",
        f"options   shard_size={manifest.options.get('shard_size')} "
        f"skip_bad={manifest.options.get('skip_bad')}; skipped {manifest.skipped} unreadable",
    ]
    if manifest.base_url is not None:
        lines.append(f"shards    {'used in place at' if manifest.in_place else 'served from'} "
                     f"{manifest.base_url}")
    for split in manifest.splits.values():
        total = sum(s.bytes for s in split.shards)
        hist = split.label_histogram
        spread = f"per class {min(hist)}..{max(hist)}" if hist else "no classes"
        if not split.fully_labeled:
            spread += f"; labels known for {split.labeled_count} of {split.num_samples}"
        lines.append(f"{split.name:<9} {split.num_samples} samples, ids {split.first_id}..{split.last_id}, "
                     f"{len(split.shards)} shards, {total / 1e6:.1f} MB, {spread}")
    return "\n".join(lines)


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
