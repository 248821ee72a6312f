"""Existing WebDataset shards as a source: `wds:PATTERN`, used in place or copied (`--copy`).

PATTERN is a brace pattern of shard locations (`/data/train-{0000..0127}.tar`, `https://host/
train-{000..009}.tar`, `pipe:aws s3 cp s3://bkt/train-{000..009}.tar -`); each expands to one
shard opened with webdataset's `gopen`, so local paths and anything its opener reads work. The
evaluation split is an optional second pattern (`--eval-source wds:PATTERN`).

Samples follow the common convention (img2dataset, timm's `imagenet-1k-wds`): any `__key__`
string, one image member (`image_key`: the extensions tried in order, default jpg, jpeg, png,
webp, ...), a label in `cls` (an integer or a class name), a field of the `json` member
(`json:FIELD`), or none, and any other members, which are ignored. Class names come from a file
(`classes`, one per line in label order) or from the data: integer labels name classes 0..max by
their number; string labels are sorted, numerically when every one is an integer (never "10"
before "2").

`scan` reads every shard once, whatever the mode: the sha256 and size of each, each sample's key
and label, and whether its image decodes (PIL verify). A sample whose image cannot be read, or
an evaluation sample without a label, is an error naming shard and key; with skip_bad it is left
out (its tar position recorded, so in-place ids skip it) and counted. A pool sample without a
label is kept as unlabeled (-1). A key seen twice in a split is an error. Normalisation
statistics come from a seeded reservoir sample of at most STATS_SAMPLE_SIZE pool images (Vitter's
Algorithm R, ACM TOMS 1985), each decoded only when it enters the reservoir.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from tidal_dist.data.manifest import ShardInfo, SplitInfo
from tidal_dist.data.sources import (SPLITS, CollectionSource, PixelStatsSample, SourceSpec, class_indices,
                                     image_size_of, label_value, parse_spec, read_class_names,
                                     resolved_against, shared_size)
from tidal_dist.job.errors import UserError

DEFAULT_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff")
CHUNK = 1 << 20


def expand_pattern(pattern: str) -> list[str]:
    """The shard locations a brace pattern names, in order."""
    import braceexpand

    urls = list(braceexpand.braceexpand(pattern))
    if not urls:
        raise UserError(f"shard pattern '{pattern}' names no shard")
    return urls


def _scheme(url: str) -> str:
    return "pipe" if url.startswith("pipe:") else urlparse(url).scheme


def shard_base(urls: list[str]) -> tuple[str, list[str]]:
    """(base, names) such that the manifest's shard source (data/locations.py) finds shard i at
    base + names[i]: local shards get their common folder; URLs their common prefix up to a '/';
    pipe: commands a {shard} placeholder where the shards' locations differ."""
    schemes = {_scheme(u) for u in urls}
    if schemes <= {"", "file"}:
        paths = [Path(urlparse(u).path) if _scheme(u) == "file" else Path(u) for u in urls]
        folder = Path(os.path.commonpath([str(p.parent) for p in paths]))
        return str(folder), [p.relative_to(folder).as_posix() for p in paths]
    prefix = os.path.commonprefix(urls)
    prefix = prefix[:prefix.rfind("/") + 1]
    if "pipe" not in schemes and (not prefix or prefix.endswith("//")):
        raise UserError(f"shards '{urls[0]}' ... '{urls[-1]}': in place, every shard of a split must "
                        f"be under one URL prefix (one host); use --copy to gather them")
    rests = [u[len(prefix):] for u in urls]
    if "pipe" not in schemes:
        return prefix, rests
    suffix = os.path.commonprefix([r[::-1] for r in rests])[::-1]
    cut = next((i for i, c in enumerate(suffix) if c.isspace()), len(suffix))
    suffix = suffix[cut:]  # what follows the location in the command, e.g. " -"
    names = [r[:len(r) - len(suffix)] for r in rests]
    return prefix + "{shard}" + suffix, names


class _HashingStream:
    """An opened shard, hashed and counted as webdataset's tar iterator reads it."""

    def __init__(self, raw: Any, url: str) -> None:
        self.raw, self.url = raw, url
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def __str__(self) -> str:
        return self.url


def read_shard(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member extension: bytes}) of every sample of a shard in file order; afterwards
    `shard_digest[url]` holds (sha256, bytes) of the whole file."""
    try:
        stream = _HashingStream(gopen(url, "rb"), url)
    except FileNotFoundError:
        raise UserError(f"shard '{url}' does not exist{resolved_against(url) if not _scheme(url) else ''}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"shard '{url}' cannot be opened: {e}") from None
    try:
        for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
            key = sample.pop("__key__")
            sample.pop("__url__", None)
            yield key, sample
        while stream.read(CHUNK):  # the tar's end padding counts in the file's sha256
            pass
        stream.raw.close()  # a command's failing exit status raises here
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        text = str(e.args[0]) if e.args else str(e)
        raise UserError(f"shard '{url}' cannot be read as a WebDataset tar: {type(e).__name__}: "
                        f"{text.split(' @ ')[0]}") from None
    shard_digest[url] = (stream.sha256.hexdigest(), stream.bytes)


shard_digest: dict[str, tuple[str, int]] = {}


def parse_label_option(text: str | None) -> tuple[str, str | None]:
    """--label: 'cls' (default), 'json:FIELD', 'none' -> (kind, field)."""
    if text is None or text == "cls":
        return "cls", None
    if text == "none":
        return "none", None
    if text.startswith("json:") and text[5:]:
        return "json", text[5:]
    raise UserError(f"--label '{text}': expected cls, json:FIELD (a field of each sample's .json "
                    f"member) or none")


@dataclass
class _Scanned:
    """What one pass over a split's shards found."""

    urls: list[str]
    shards: list[dict[str, Any]] = field(default_factory=list)  # sha256, bytes, kept, skipped
    keys: list[str] = field(default_factory=list)
    raw_labels: list[Any] = field(default_factory=list)  # int, str or None per kept sample
    exts: list[str] = field(default_factory=list)


class WdsSource(CollectionSource):
    """Existing shards: scanned once (`scan`), then either indexed in place (`index_split`) or
    read again for a copy (`keyed_samples`)."""

    def __init__(self, spec: SourceSpec, skip_bad: bool, eval_source: str | None = None,
                 image_key: str | None = None, label: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(spec, skip_bad)
        self.image_keys = tuple(k.strip().lstrip(".") for k in image_key.split(",")) if image_key \
            else DEFAULT_IMAGE_KEYS
        self.label_kind, self.label_field = parse_label_option(label)
        self.class_file_names = read_class_names(classes) if classes else None
        patterns = {"pool": spec.path}
        if eval_source is not None:
            eval_spec = parse_spec(eval_source)
            if eval_spec.kind != "wds":
                raise UserError(f"--eval-source '{eval_source}': expected wds:PATTERN with a wds: source")
            patterns["test"] = eval_spec.path
        self.urls = {split: expand_pattern(patterns[split]) if split in patterns else [] for split in SPLITS}
        self._scanned: dict[str, _Scanned] | None = None

    # -- the pass over every shard ---------------------------------------------------------------

    def scan(self, progress: bool = True) -> None:
        if self._scanned is not None:
            return
        from tidal_dist.telemetry.progress import progress as progress_output

        stats = PixelStatsSample(self.mode)
        sizes: set[tuple[int, int]] = set()
        scanned = {}
        for split in SPLITS:
            result = _Scanned(self.urls[split])
            where_key: dict[str, str] = {}
            bar = progress_output(total=len(result.urls), desc=f"scan {split} shards", unit="shard",
                                  enabled=progress)
            with bar:
                for url in result.urls:
                    kept, skipped = 0, []
                    for position, (key, files) in enumerate(read_shard(url)):
                        problem, image, ext, raw_label = self._check_sample(split, files)
                        if problem is not None:
                            if not self.skip_bad:
                                raise UserError(f"shard '{url}': sample '{key}' {problem}; fix it, or "
                                                f"prepare with --skip-bad to leave such samples out")
                            skipped.append(position)
                            self._skipped += 1
                            continue
                        if key in where_key:
                            raise UserError(f"duplicate sample key '{key}' in split '{split}': in "
                                            f"shard '{where_key[key]}' and in shard '{url}'; keys "
                                            f"must be unique")
                        where_key[key] = url
                        sizes.add(image_size_of(image))
                        if split == "pool":
                            stats.offer(image)
                        result.keys.append(key)
                        result.raw_labels.append(raw_label)
                        result.exts.append(ext)
                        kept += 1
                    sha256, size = shard_digest.pop(url)
                    result.shards.append({"sha256": sha256, "bytes": size, "kept": kept,
                                          "skipped": tuple(skipped)})
                    bar.update(1)
            scanned[split] = result
        if not scanned["pool"].keys:
            raise UserError(f"source '{self.spec.path}': no usable sample in the pool's shards")
        self.class_names, self.labels = class_indices(
            {s: scanned[s].raw_labels for s in SPLITS}, {s: scanned[s].keys for s in SPLITS},
            self.class_file_names, f"source 'wds:{self.spec.path}'")
        self.mean, self.std = stats.mean_std()
        self.image_size = shared_size(sizes)
        self._scanned = scanned

    def _check_sample(self, split: str, files: dict[str, bytes]) -> tuple[str | None, bytes, str, Any]:
        """(problem or None, image bytes, image extension, raw label or None)."""
        ext = next((k for k in self.image_keys if k in files), None)
        if ext is None:
            return (f"has no image member (looked for {', '.join(self.image_keys)}; it has "
                    f"{', '.join(sorted(files))}; set --image-key)"), b"", "", None
        image = files[ext]
        if image_size_of(image) is None:
            return f"has an image ({ext}) that cannot be decoded", b"", "", None
        raw_label = self._raw_label(files)
        if raw_label is None and split == "test" and self.label_kind != "none":
            return f"has no label ({self._label_name()}); the evaluation split needs one", b"", "", None
        return None, image, ext, raw_label

    def _label_name(self) -> str:
        return "a .cls member" if self.label_kind == "cls" else f"field '{self.label_field}' of .json"

    def _raw_label(self, files: dict[str, bytes]) -> int | str | None:
        if self.label_kind == "cls":
            return label_value(files["cls"].decode("utf-8")) if "cls" in files else None
        if self.label_kind == "json" and "json" in files:
            try:
                return label_value(json.loads(files["json"]).get(self.label_field))
            except (ValueError, AttributeError):
                return None
        return None

    # -- what prepare reads ------------------------------------------------------------------------

    @property
    def shard_base(self) -> str:
        base, _ = shard_base(self.urls["pool"] + self.urls["test"])
        return base

    def split_length(self, split: str) -> int:
        self.scan(progress=False)
        return len(self._scanned[split].keys)

    def keyed_samples(self, split: str) -> Iterator[tuple[str, int, bytes, str]]:
        """A second pass for --copy: the kept samples with their labels, bytes as they are."""
        self.scan(progress=False)
        result = self._scanned[split]
        index = 0
        for url, shard in zip(result.urls, result.shards):
            skipped = set(shard["skipped"])
            for position, (key, files) in enumerate(read_shard(url)):
                if position in skipped:
                    continue
                if index >= len(result.keys) or key != result.keys[index]:
                    raise UserError(f"shard '{url}' changed while it was being prepared (sample "
                                    f"'{key}' where '{result.keys[index] if index < len(result.keys) else ''}' "
                                    f"was); run prepare again")
                ext = result.exts[index]
                yield key, self.labels[split][index], files[ext], ext
                index += 1
            shard_digest.pop(url, None)

    def index_split(self, split: str, folder: Path, first_id: int,
                    write_index: Callable[..., SplitInfo]) -> SplitInfo:
        """The split's manifest entry for its shards where they are; writes labels, keys and
        the wids index (absolute shard locations) into `folder`."""
        result = self._scanned[split]
        _, names = shard_base(self.urls["pool"] + self.urls["test"])
        names = names[:len(self.urls["pool"])] if split == "pool" else names[len(self.urls["pool"]):]
        shards, next_id = [], first_id
        for name, shard in zip(names, result.shards):
            shards.append(ShardInfo(url=name, nsamples=shard["kept"], first_id=next_id,
                                    last_id=next_id + shard["kept"] - 1, sha256=shard["sha256"],
                                    bytes=shard["bytes"], skipped_positions=shard["skipped"]))
            next_id += shard["kept"]
        wids = [{"url": url, "nsamples": s["kept"] + len(s["skipped"]), "filesize": s["bytes"]}
                for url, s in zip(result.urls, result.shards)]
        return write_index(self, split, folder, first_id, tuple(shards), self.labels[split],
                           result.keys, wids)
