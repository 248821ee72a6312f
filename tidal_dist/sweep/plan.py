"""A sweep's plan: one run per (strategy, seed), laid out as OUT/<strategy>/seed_<seed>/, and its
record OUT/sweep.json (what `--task K`, `--print` and `tidal-dist report OUT` read).

sweep.json:
    {"version": 1, "cwd": where relative paths in the config resolve, "config": FILE (absolute),
     "strategies": [...], "seeds": [...], "overrides": [...], "launcher": "torchrun ..." | null,
     "runs": [{"name": "tidal_entropy/seed_0", "strategy": ..., "seed": 0,
               "dir": "tidal_entropy/seed_0" (relative to OUT),
               "args": ["run", "--config", FILE, *overrides, "al.strategy=...", "run.seed=...",
                        "run.dir=OUT/tidal_entropy/seed_0"]}, ...]}

The runs are ordered strategy-major, in the order given: run K of an array job is runs[K].
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from tidal_dist.config import (RUN_CONFIG_NAME, Config, config_from_dict, diff, load_config,
                               parse_override)
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_json

SWEEP_NAME = "sweep.json"
SWEEP_VERSION = 1
# The sweep sets these per run; an override of them would silently fold runs together.
SWEEP_KEYS = ("al.strategy", "run.seed", "run.dir")


@dataclass
class PlannedRun:
    name: str
    strategy: str
    seed: int
    dir: str  # relative to the sweep folder
    args: list[str]  # `python -m tidal_dist ARGS` runs it


@dataclass
class Sweep:
    out: Path
    cwd: str
    config: str
    strategies: list[str]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    launcher: str | None = None
    runs: list[PlannedRun] = field(default_factory=list)

    def run_dir(self, run: PlannedRun) -> Path:
        return self.out / run.dir

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("out")
        return {"version": SWEEP_VERSION, **d}


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what}: expected a comma-separated list, got '{text}'")
    if len(set(items)) != len(items):
        raise UserError(f"--{what}: '{text}' names an entry twice")
    return items


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for item in parse_list(text, "seeds"):
        try:
            seeds.append(int(item))
        except ValueError:
            raise UserError(f"--seeds: '{item}' is not an integer (e.g. --seeds 0,1,2)") from None
    return seeds


def plan_sweep(config: str, strategies: list[str], seeds: list[int], out: str | Path,
               overrides: list[str], launcher: str | None) -> Sweep:
    """Build and check the plan; nothing is written. Every run's config must load, and a run
    folder that already exists must hold the same config (the run would refuse it later)."""
    from tidal_dist.strategies import get_strategy

    if not Path(config).is_file():
        raise UserError(f"--config: config file '{config}' does not exist")
    for text in overrides:
        key, _ = parse_override(text)
        if key in SWEEP_KEYS:
            raise UserError(f"override '{text}': the sweep sets {key} for each run itself "
                            f"(use --strategies, --seeds, --out)")
    for name in strategies:
        get_strategy(name)
    out = Path(out).absolute()
    sweep = Sweep(out=out, cwd=os.getcwd(), config=str(Path(config).absolute()),
                  strategies=list(strategies), seeds=list(seeds), overrides=list(overrides),
                  launcher=launcher)
    for strategy in strategies:
        for seed in seeds:
            rel = f"{strategy}/seed_{seed}"
            args = ["run", "--config", sweep.config, *overrides, f"al.strategy={strategy}",
                    f"run.seed={seed}", f"run.dir={out / rel}"]
            run = PlannedRun(name=rel, strategy=strategy, seed=seed, dir=rel, args=args)
            check_run_dir(sweep, run, run_config(run))
            sweep.runs.append(run)
    return sweep


def run_config(run: PlannedRun) -> Config:
    """The run's resolved config, from its argument list (as `tidal-dist run` would load it)."""
    from tidal_dist.cycle.plan import resolve_model_inputs

    config, overrides = split_args(run.args)
    cfg = load_config(config, overrides)
    resolve_model_inputs(cfg)  # as `tidal-dist run` does: a timm backbone's weights' input settings
    return cfg


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    if not args or args[0] != "run":
        raise UserError(f"sweep run arguments must start with 'run', got {args[:1]}")
    rest = list(args[1:])
    config = None
    if "--config" in rest:
        i = rest.index("--config")
        config = rest[i + 1]
        del rest[i:i + 2]
    return config, rest


def check_run_dir(sweep: Sweep, run: PlannedRun, cfg: Config) -> None:
    saved = sweep.run_dir(run) / RUN_CONFIG_NAME
    if not saved.exists():
        return
    old = config_from_dict(yaml.safe_load(saved.read_text()) or {}, str(saved))
    changed = diff(old, cfg)
    if changed:
        keys = ", ".join(f"{k} ({a!r} there, {b!r} now)" for k, a, b in changed)
        raise UserError(f"sweep run {run.name}: {sweep.run_dir(run)} was created with a different "
                        f"config: {keys}; use another --out, or the same settings to resume")


def write_sweep(sweep: Sweep) -> Path:
    return atomic_write_json(sweep.out / SWEEP_NAME, sweep.to_json())


def load_sweep(out: str | Path) -> Sweep:
    path = Path(out) / SWEEP_NAME
    if not path.is_file():
        raise UserError(f"{path} does not exist: create the sweep first with "
                        f"`tidal-dist sweep --config FILE --strategies ... --seeds ... --out {out}`")
    try:
        data = json.loads(path.read_text())
        if data.get("version") != SWEEP_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {SWEEP_VERSION}")
        runs = [PlannedRun(**r) for r in data["runs"]]
        return Sweep(out=Path(out).absolute(), cwd=data["cwd"], config=data["config"],
                     strategies=data["strategies"], seeds=data["seeds"],
                     overrides=data.get("overrides", []), launcher=data.get("launcher"), runs=runs)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a sweep description this version can read ({e})") from None


def committed_cycles(run_dir: Path) -> int:
    """Committed cycles of a run folder (the same rule as loop.committed_cycles, without
    importing the trainer)."""
    n = 0
    while (run_dir / "cycles" / f"cycle_{n:04d}").is_dir():
        n += 1
    return n


def run_progress(sweep: Sweep, run: PlannedRun) -> tuple[int, int]:
    """(committed cycles, al.cycles) of a planned run."""
    return committed_cycles(sweep.run_dir(run)), run_config(run).al.cycles
