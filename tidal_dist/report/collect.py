"""Finding runs and grouping them: which runs may be averaged, and which compared.

A path is a run folder (it holds config.yaml), a sweep folder (sweep.json lists its runs), or any
folder holding run folders below it. Each run's config.yaml is read as plain YAML (not through the
typed config, so runs written by older or newer versions still load); a key it lacks takes this
version's default.

Runs are grouped into protocols: runs whose configs are equal except for what a comparison varies
on purpose (PER_RUN_KEYS: seed, folder, strategy, objective) and what never changes a result
(config.MUTABLE_KEYS). Inside a protocol, a series is one strategy with one objective setting
("auto" follows the strategy); a series averages its runs over seeds. Runs of different protocols
are never averaged; the report says which keys set them apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidal_dist.config import MUTABLE_KEYS, RUN_CONFIG_NAME, Config, flatten
from tidal_dist.job.errors import UserError

SWEEP_NAME = "sweep.json"
PER_RUN_KEYS = frozenset({"run.seed", "run.dir", "al.strategy", "train.objective"})
IGNORED_KEYS = PER_RUN_KEYS | MUTABLE_KEYS
BASELINE = "random"


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flat: "section.key" -> value, defaults filled in
    cycles: list[dict]  # metrics.json of each committed cycle, in order

    @property
    def strategy(self) -> str:
        return str(self.config.get("al.strategy"))

    @property
    def objective(self) -> str:
        return str(self.config.get("train.objective", "auto"))

    @property
    def seed(self) -> int:
        return int(self.config.get("run.seed", 0))

    def cycle_dir(self, k: int) -> Path:
        return self.path / "cycles" / f"cycle_{k:04d}"


@dataclass
class Series:
    """One strategy (with one objective setting) under one protocol: its runs, one per seed."""

    strategy: str
    objective: str
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.strategy if self.objective == "auto" else f"{self.strategy} ({self.objective})"

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def by_seed(self) -> dict[int, Run]:
        return {r.seed: r for r in self.runs}


@dataclass
class Protocol:
    slug: str  # folder name in the report: the dataset, numbered when several protocols share it
    config: dict[str, Any]  # the shared keys (IGNORED_KEYS left out)
    series: list[Series] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        return dataset_name(self.config)

    def baseline(self) -> Series | None:
        """The Random series (its default objective preferred)."""
        randoms = [s for s in self.series if s.strategy == BASELINE]
        randoms.sort(key=lambda s: s.objective != "auto")
        return randoms[0] if randoms else None


def dataset_name(config: dict[str, Any]) -> str:
    root = str(config.get("data.root", "dataset")).rstrip("/")
    return Path(root).name or "dataset"


def flat_config(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of config sections")
    flat = flatten(Config())
    for section, values in raw.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[str(section)] = values
    return flat


def run_folders(path: Path, notes: list[str]) -> list[Path]:
    """Run folders named by `path` (a run, a sweep, or a folder of runs)."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if (path / SWEEP_NAME).is_file():
        try:
            runs = json.loads((path / SWEEP_NAME).read_text())["runs"]
            dirs = [path / r["dir"] for r in runs]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path / SWEEP_NAME}: not a sweep description ({e})") from None
        missing = [d for d in dirs if not (d / RUN_CONFIG_NAME).is_file()]
        if missing:
            notes.append(f"{len(missing)} planned run(s) of {path} not started yet: "
                         + ", ".join(str(d.relative_to(path)) for d in missing))
        return [d for d in dirs if d not in missing]
    if (path / RUN_CONFIG_NAME).is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob(RUN_CONFIG_NAME))
    if not found:
        raise UserError(f"{path}: no run folder (config.yaml) or sweep (sweep.json) in it")
    return found


def load_run(path: Path, notes: list[str]) -> Run | None:
    config = flat_config(path / RUN_CONFIG_NAME)
    cycles = []
    while (path / "cycles" / f"cycle_{len(cycles):04d}" / "metrics.json").is_file():
        cycles.append(json.loads((path / "cycles" / f"cycle_{len(cycles):04d}" / "metrics.json")
                                 .read_text()))
    if not cycles:
        notes.append(f"{path}: no committed cycle yet, left out")
        return None
    if any(c.get("accuracy", 0.0) is None for c in cycles):  # a dataset without a labeled test split
        notes.append(f"{path}: test accuracy unknown (its dataset has no labeled test split), "
                     f"left out; its selections are in {path}/cycles/ and queries/")
        return None
    unfinished = unfinished_note(path, len(cycles), config)
    if unfinished:
        notes.append(unfinished)
    return Run(path=path, config=config, cycles=cycles)


def unfinished_note(path: Path, committed: int, config: dict[str, Any]) -> str | None:
    """What to say of a run whose recorded outcome is not "done" (running, waiting for labels,
    preempted, failed, killed): its curves stop at its last committed cycle. A run folder with no
    outcome.json (written by hand, or by a version that did not record one) is taken as it is."""
    from tidal_dist.job import outcome

    if not outcome.record_path(path).is_file():
        return None
    record = outcome.read(path)
    status = "unreadable outcome.json" if record is None else record.status
    if status == "done":
        return None
    planned = config.get("al.cycles")
    return (f"{path}: unfinished ({status}): {committed} of {planned} cycle(s) committed; "
            f"its results stop at cycle {committed - 1}")


def collect(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    notes: list[str] = []
    runs, seen = [], set()
    for p in paths:
        for folder in run_folders(Path(p), notes):
            key = folder.resolve()
            if key in seen:
                continue
            seen.add(key)
            run = load_run(folder, notes)
            if run is not None:
                runs.append(run)
    return runs, notes


def protocol_key(config: dict[str, Any]) -> str:
    shared = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    return json.dumps(shared, sort_keys=True, default=str)


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = sorted((set(a) | set(b)) - IGNORED_KEYS)
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def group(runs: list[Run]) -> tuple[list[Protocol], list[str]]:
    """Protocols in order of first appearance, series sorted Random first, runs by seed."""
    notes: list[str] = []
    by_key: dict[str, Protocol] = {}
    for run in runs:
        key = protocol_key(run.config)
        if key not in by_key:
            shared = {k: v for k, v in run.config.items() if k not in IGNORED_KEYS}
            by_key[key] = Protocol(slug="", config=shared)
        protocol = by_key[key]
        series = next((s for s in protocol.series
                       if (s.strategy, s.objective) == (run.strategy, run.objective)), None)
        if series is None:
            series = Series(run.strategy, run.objective)
            protocol.series.append(series)
        twin = series.by_seed().get(run.seed)
        if twin is not None:
            notes.append(f"{run.path} repeats {series.label} seed {run.seed} of {twin.path}: "
                         f"left out (a seed counts once)")
            continue
        series.runs.append(run)
    protocols = list(by_key.values())
    for protocol in protocols:
        protocol.series.sort(key=lambda s: (s.strategy != BASELINE, s.label))
        for s in protocol.series:
            s.runs.sort(key=lambda r: r.seed)
    name_slugs(protocols)
    if len(protocols) > 1:
        first = protocols[0]
        for other in protocols[1:]:
            keys = differing_keys(first.config, other.config)
            shown = ", ".join(f"{k} ({a!r} vs {b!r})" for k, a, b in keys[:12])
            more = f" and {len(keys) - 12} more" if len(keys) > 12 else ""
            notes.append(f"runs of protocol '{other.slug}' are not averaged with those of "
                         f"'{first.slug}': their configs differ in {shown}{more}")
    return protocols, notes


def name_slugs(protocols: list[Protocol]) -> None:
    counts: dict[str, int] = {}
    for p in protocols:
        counts[p.dataset] = counts.get(p.dataset, 0) + 1
    seen: dict[str, int] = {}
    for p in protocols:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.dataset)
        if counts[p.dataset] > 1:
            seen[p.dataset] = seen.get(p.dataset, 0) + 1
            p.slug = f"{base}-{seen[p.dataset]}"
        else:
            p.slug = base
