"""Reading a run directory from Python: its outcome and config, and each committed cycle's labeled
and queried ids, scores, metrics and training-dynamics memmaps (layout in cycle/loop.py).

    run = Run("runs/nb")
    run.status                      # done | waiting_for_labels | preempted | ... (outcome.json)
    [c.metrics["accuracy"] for c in run.cycles]
    c = run.cycle(-1); c.queried_ids, c.queried_scores, c.td().mean()

Nothing is loaded until asked for; the TD buffers open as read-only memmaps.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from tidal_dist.config import RUN_CONFIG_NAME, Config, load_config
from tidal_dist.cycle.loop import committed_cycles, cycle_dir, load_npz
from tidal_dist.dynamics.buffer import TDBuffer
from tidal_dist.job import outcome
from tidal_dist.job.errors import UserError


class Cycle:
    """One committed cycle (cycles/cycle_K)."""

    def __init__(self, run_dir: Path, index: int) -> None:
        self.index = index
        self.path = cycle_dir(run_dir, index)

    def __repr__(self) -> str:
        return f"Cycle({self.index}, {self.path})"

    @cached_property
    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())

    @cached_property
    def _labeled(self) -> dict[str, np.ndarray]:
        return load_npz(self.path / "labeled.npz")

    @cached_property
    def _queried(self) -> dict[str, np.ndarray]:
        return load_npz(self.path / "queried.npz")

    @property
    def labeled_ids(self) -> np.ndarray:
        """The ids this cycle trained on, ascending."""
        return self._labeled["ids"]

    @property
    def labels(self) -> np.ndarray:
        """Their labels (the oracle's answers), row for row."""
        return self._labeled["labels"]

    @property
    def queried_ids(self) -> np.ndarray:
        """The ids this cycle asked to label, in pick order."""
        return self._queried["ids"]

    @property
    def queried_scores(self) -> np.ndarray:
        """The strategy's reported value for each query (what queries/cycle_K.csv calls score)."""
        return self._queried["reported"]

    @property
    def queried_uncertainty(self) -> np.ndarray:
        return self._queried["uncertainty"]

    @cached_property
    def scores(self) -> dict[str, np.ndarray]:
        """Every candidate's scalar scores (ids, uncertainty, reported, the logged ablation
        scores), ascending by id."""
        return load_npz(self.path / "scores.npz")

    def td(self) -> TDBuffer:
        """The labeled set's training dynamics (ids, sum, count, stats), read-only memmaps."""
        return TDBuffer(self.path / "td")

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"


class Run:
    """A run directory written by `tidal-dist run` (or `train`)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        if not (self.dir / RUN_CONFIG_NAME).is_file():
            raise UserError(f"run dir '{self.dir}': no {RUN_CONFIG_NAME} (not a run directory, "
                            f"or the run never started)")

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, status={self.status!r}, cycles={len(self.cycles)})"

    @cached_property
    def config(self) -> Config:
        return load_config(self.dir / RUN_CONFIG_NAME)

    @property
    def outcome(self) -> outcome.Outcome | None:
        return outcome.read(self.dir)

    @property
    def status(self) -> str:
        record = self.outcome
        return record.status if record else "not_finished"

    @property
    def cycles(self) -> list[Cycle]:
        return [Cycle(self.dir, k) for k in range(committed_cycles(self.dir))]

    def cycle(self, index: int) -> Cycle:
        cycles = self.cycles
        try:
            return cycles[index]
        except IndexError:
            raise UserError(f"run dir '{self.dir}': no committed cycle {index} (it has "
                            f"{len(cycles)})") from None

    @property
    def results(self) -> dict:
        path = self.dir / "results.json"
        return json.loads(path.read_text()) if path.exists() else {"cycles": []}

    def model(self, cycle: int = -1, device: str = "cpu"):
        """The trained network of a cycle, ready for inference (api/model.py)."""
        from tidal_dist.api.model import load_model

        return load_model(self.dir, cycle, device)
