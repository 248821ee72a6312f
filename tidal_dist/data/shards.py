"""`prepare`: a source dataset -> WebDataset tar shards + labels + wids index + manifest.

Atomicity: everything is written into the sibling folder OUT.partial and renamed to OUT at the end,
so OUT either does not exist or is complete (manifest.json is written last, inside OUT.partial).
A run that was killed leaves OUT.partial behind; the next run says so, removes it and starts over.

Shards used in place (`wds:` sources without `copy`): data/wds_source.py scans the user's shards
once (sha256, keys, labels, decodable images) and `index_in_place` writes only the small files
(labels, keys, wids index, manifest) into OUT; no image is copied or re-encoded.

`base_url` records in the manifest where the shards will be served from (data/locations.py); the
shards are still written to OUT, for the user to upload. It does not change the shards, so
preparing a finished output again with another base_url only rewrites its manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import webdataset as wds

from tidal_dist.data.hf_source import HfSource
from tidal_dist.data.locations import check_base_url
from tidal_dist.data.manifest import (FORMAT_VERSION, MANIFEST_NAME, Manifest, ShardInfo, SplitInfo,
                                      known_label_mask, load_manifest)
from tidal_dist.data.sources import SPLITS, Source, SourceSpec, open_source, parse_spec
from tidal_dist.data.wds_source import WdsSource
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_bytes, atomic_write_json, fsync_dir
from tidal_dist.telemetry.progress import progress as progress_output

WIDS_KIND = "wids-shard-index-v1"


def sample_key(sample_id: int) -> str:
    return f"{sample_id:010d}"


class _HashingFile:
    """A write-only file that hashes and counts what goes through it, so a shard's sha256 needs no
    second read."""

    def __init__(self, path: Path) -> None:
        self.file: IO[bytes] = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.discarding = False

    def write(self, data: bytes) -> int:
        if self.discarding:
            return len(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())  # the folder rename at the end must not publish unflushed data
        self.file.close()


class _ShardSink:
    """One tar shard being written."""

    def __init__(self, path: Path, first_id: int) -> None:
        self.path = path
        self.first_id = first_id
        self.count = 0
        self.file = _HashingFile(path)
        # Fixed mtime and owner: preparing the same source twice gives byte-identical shards.
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=0, user="tidal", group="tidal")

    def write(self, sample_id: int, label: int, data: bytes, ext: str) -> None:
        self.tar.write({"__key__": sample_key(sample_id), "cls": str(label).encode(), ext: data})
        self.count += 1

    def abandon(self) -> None:
        """Close after a failed write (a full disk) without writing more: an unclosed tar
        stream would try to flush its buffer when collected, and print a second, ignored error."""
        self.file.discarding = True
        with contextlib.suppress(OSError):  # the buffered file's own flush fails the same way
            self.tar.close()
            self.file.file.close()

    def close(self) -> ShardInfo:
        self.tar.close()
        self.file.close()
        return ShardInfo(url=self.path.name, nsamples=self.count, first_id=self.first_id,
                         last_id=self.first_id + self.count - 1, sha256=self.file.sha256.hexdigest(),
                         bytes=self.file.bytes)


def _write_split(source: Source, split: str, folder: Path, first_id: int, shard_size: int,
                 progress: bool) -> SplitInfo:
    shards: list[ShardInfo] = []
    labels: list[int] = []
    keys: list[str] = []
    sink: _ShardSink | None = None
    bar = progress_output(total=source.split_length(split), desc=f"prepare {split}", unit="img",
                          enabled=progress)
    try:
        with bar:
            for key, label, data, ext in source.keyed_samples(split):
                if sink is None or sink.count == shard_size:
                    if sink is not None:
                        shards.append(sink.close())
                    sink = _ShardSink(folder / f"{split}-{len(shards):06d}.tar",
                                      first_id + len(labels))
                sink.write(first_id + len(labels), label, data, ext)
                labels.append(label)
                keys.append(key)
                bar.update(1)
        if sink is not None:
            shards.append(sink.close())
            sink = None
    except BaseException:
        if sink is not None:
            sink.abandon()
        raise
    return write_split_index(source, split, folder, first_id, tuple(shards), labels, keys,
                             [{"url": s.url, "nsamples": s.nsamples, "filesize": s.bytes} for s in shards])


def write_split_index(source: Source, split: str, folder: Path, first_id: int,
                      shards: tuple[ShardInfo, ...], labels: list[int], keys: list[str],
                      wids_shardlist: list[dict[str, Any]]) -> SplitInfo:
    """The labels, keys and wids index of one split, and its SplitInfo."""
    label_array = np.asarray(labels, dtype=np.int64)
    buffer = io.BytesIO()
    np.save(buffer, label_array, allow_pickle=False)
    labels_file = f"{split}-labels.npy"
    atomic_write_bytes(folder / labels_file, buffer.getvalue())
    keys_file = f"{split}-keys.json"
    keys_bytes = json.dumps(keys, ensure_ascii=False).encode("utf-8")
    atomic_write_bytes(folder / keys_file, keys_bytes)

    wids_index = f"{split}.wids.json"
    atomic_write_json(folder / wids_index, {
        "__kind__": WIDS_KIND,
        "wids_version": 1,
        "name": f"{source.name}-{split}",
        # relative urls are resolved by wids against this file's folder
        "shardlist": wids_shardlist,
    })
    known = label_array[known_label_mask(label_array)]
    histogram = np.bincount(known, minlength=len(source.class_names))
    return SplitInfo(
        name=split, shards=shards, num_samples=len(labels), first_id=first_id,
        last_id=first_id + len(labels) - 1, label_histogram=[int(v) for v in histogram],
        labels_file=labels_file, labels_sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
        wids_index=wids_index, keys_file=keys_file,
        keys_sha256=hashlib.sha256(keys_bytes).hexdigest(),
        num_labeled=None if len(known) == len(label_array) else int(len(known)),
    )


def _write_dataset(source: Source, spec_text: str, folder: Path, options: dict[str, Any],
                   base_url: str | None, progress: bool, in_place: bool = False) -> Manifest:
    splits: dict[str, SplitInfo] = {}
    next_id = 0
    for split in SPLITS:
        if in_place:
            splits[split] = source.index_split(split, folder, next_id, write_split_index)
        else:
            splits[split] = _write_split(source, split, folder, next_id, options["shard_size"], progress)
        next_id += splits[split].num_samples
    if in_place:
        base_url = source.shard_base
    manifest = Manifest(
        format_version=FORMAT_VERSION, dataset=source.name, source=spec_text,
        source_canonical=source.spec.canonical, options=dict(options),
        class_names=list(source.class_names), num_classes=len(source.class_names), mode=source.mode,
        image_size=source.image_size, mean=source.mean, std=source.std, skipped=source.skipped,
        splits=splits, base_url=base_url, shard_keys="original" if in_place else "id",
        image_keys=tuple(source.image_keys) if in_place else None,
    )
    atomic_write_json(folder / MANIFEST_NAME, manifest.to_dict())  # last: marks the folder complete
    return manifest


def open_any_source(spec: str, skip_bad: bool = False, options: dict[str, Any] | None = None) -> Source:
    """sources.open_source, and the sources of existing collections built on it (wds:, hf:)."""
    parsed = parse_spec(spec)
    if parsed.kind == "wds":
        return WdsSource(parsed, skip_bad, **(options or {}))
    if parsed.kind == "hf":
        return HfSource(parsed, skip_bad, **(options or {}))
    return open_source(spec, skip_bad=skip_bad, options=options)


def _existing_output(out: Path, spec: SourceSpec, options: dict[str, Any]) -> Manifest | None:
    """The manifest of a finished identical dataset at `out`; None if `out` is absent or empty.
    Anything else at `out` is a UserError: prepare never deletes data it did not write."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"output '{out}' exists and is not a folder")
    if (out / MANIFEST_NAME).exists():
        manifest = load_manifest(out)
        if manifest.source_canonical == spec.canonical and manifest.options == options:
            return manifest
        raise UserError(
            f"output '{out}' already holds another prepared dataset:\n"
            f"  there: source {manifest.source_canonical}, options {manifest.options}\n"
            f"  now:   source {spec.canonical}, options {options}\n"
            f"choose another --out, or delete '{out}' yourself")
    if any(out.iterdir()):
        raise UserError(f"output '{out}' exists, is not empty and has no {MANIFEST_NAME}: "
                        f"not a prepared dataset; choose another --out or empty it yourself")
    return None


def prepare(source_spec: str, out_dir: str | os.PathLike, shard_size: int = 5000,
            skip_bad: bool = False, progress: bool = True, base_url: str | None = None,
            copy: bool = False, source_options: dict[str, Any] | None = None) -> Manifest:
    """Write `source_spec` as shards into `out_dir`; a no-op if it is already there (apart from
    recording a new `base_url`). A `wds:` source is indexed in place unless `copy`.
    `source_options` (only those set): classes (a class-names file), eval_source, image_key, label."""
    if shard_size < 1:
        raise UserError(f"shard_size must be >= 1 (got {shard_size})")
    if base_url is not None:
        check_base_url(base_url, "--base-url")
    spec = parse_spec(source_spec)
    in_place = spec.kind == "wds" and not copy
    if copy and spec.kind != "wds":
        raise UserError(f"--copy applies to wds: sources (the others are always written as shards)")
    if in_place and base_url is not None:
        raise UserError("--base-url: shards used in place stay where they are (the manifest points "
                        "at them); with --copy, prepare writes its own shards for you to serve")
    out = Path(out_dir).absolute()
    source_options = {k: v for k, v in (source_options or {}).items() if v is not None}
    if source_options.get("classes") is not None:
        source_options["classes"] = str(Path(source_options["classes"]).absolute())
    # Options at their defaults are not recorded: a dataset prepared before they existed matches.
    options = {"shard_size": shard_size, "skip_bad": skip_bad, **source_options}
    if in_place:
        options["in_place"] = True
    existing = _existing_output(out, spec, options)
    if existing is not None:
        if base_url is not None and base_url != existing.base_url:
            existing = replace(existing, base_url=base_url)
            atomic_write_json(out / MANIFEST_NAME, existing.to_dict())
            print(f"{out}: already prepared from {spec.canonical}; the manifest now says its "
                  f"shards are served from {base_url}")
            return existing
        print(f"{out}: already prepared from {spec.canonical} ({existing.num_samples} samples); "
              f"nothing to do")
        return existing

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        print(f"{partial}: left over from an interrupted prepare; removing it and starting again")
        shutil.rmtree(partial)
    # errors here leave nothing behind (a wds: source reads every shard once in here)
    source = open_any_source(source_spec, skip_bad=skip_bad, options=source_options)
    if spec.kind == "wds":
        source.scan(progress)  # every shard read once, with a progress bar, before anything is written
    partial.mkdir(parents=True)
    try:
        manifest = _write_dataset(source, source_spec, partial, options, base_url, progress, in_place)
    except BaseException:
        # A clean failure removes its own leftovers; a killed process cannot, and the next run
        # finds OUT.partial and starts over.
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # checked to be empty above
    os.rename(partial, out)
    fsync_dir(out.parent)
    if progress:
        print(f"{out}: {manifest.num_samples} samples in "
              f"{sum(len(s.shards) for s in manifest.splits.values())} shards"
              + (f", {manifest.skipped} unreadable images skipped" if manifest.skipped else "")
              + (" (shards indexed in place, nothing copied)" if in_place else ""))
        if base_url is not None:
            print(f"copy the shards ({out}/*.tar) to {base_url}; keep {out} (manifest, labels, "
                  f"indexes) as data.root")
    return manifest
