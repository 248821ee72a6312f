"""Helpers for the sweep tests: a tiny protocol on the synthetic dataset, and the sweep command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tests.mp import run_module


def write_protocol(path: Path, root: Path, **al) -> Path:
    cfg = {"data": {"root": str(root), "num_workers": 0},
           "model": {"backbone": "small_cnn", "width": 4},
           "train": {"epochs": 2, "batch_size": 16, "checkpoint_every": 1},
           "al": {"initial": 20, "budget": 10, "cycles": 2, "subset_size": 40,
                  "score_batch_size": 32, **al}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def sweep(config: Path, out: Path, strategies: str = "random,tidal_entropy", seeds: str = "0,1",
          *extra: str, env: dict | None = None, timeout: float = 300):
    return run_module(["sweep", "--config", str(config), "--strategies", strategies,
                       "--seeds", seeds, "--out", str(out), *extra], env=env, timeout=timeout)


def committed(run_dir: Path) -> int:
    n = 0
    while (run_dir / "cycles" / f"cycle_{n:04d}").is_dir():
        n += 1
    return n


def snapshot(folder: Path) -> dict[str, int]:
    """mtime (ns) of every file under `folder`: unchanged means nothing was rewritten."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file()}


def wait_for_epoch(run_dir: Path, timeout: float = 120) -> None:
    """Until the run's metrics.jsonl holds a training epoch (the run is in its training loop)."""
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists() and any(json.loads(line).get("event") == "epoch"
                                 for line in path.read_text().splitlines() if line.endswith("}")):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{path}: no epoch record after {timeout}s")
