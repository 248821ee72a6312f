"""A run's live metrics: one object that turns each event (step, epoch, phase, cycle) into a
metrics.jsonl record, tracker scalars and, for epochs, phases and cycles, one plain log line with
throughput and ETA.

Rank 0 writes; on the other ranks (and in sessions with no run directory, e.g. `tidal-dist train`)
the stream and trackers are absent, and log lines go nowhere because those ranks log warnings only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tidal_dist.telemetry import trackers as tracking
from tidal_dist.telemetry.progress import format_duration
from tidal_dist.telemetry.stream import METRICS_NAME, MetricsStream

log = logging.getLogger("tidal_dist")

PHASES = ("train", "evaluate", "score", "select", "commit")


def _loss_text(parts: dict[str, float]) -> str:
    """'loss 1.2345 (ce 1.2000, kl 0.0345)' from whatever parts the objective reports."""
    parts = {k: v for k, v in parts.items() if isinstance(v, (int, float))}
    rest = [f"{k} {v:.4f}" for k, v in parts.items() if k != "loss"]
    head = f"loss {parts['loss']:.4f}" if "loss" in parts else ""
    return head + (f" ({', '.join(rest)})" if rest and head else ", ".join(rest))


class Telemetry:
    def __init__(self, stream: MetricsStream | None = None, trackers: list | None = None):
        self.stream = stream
        self.trackers = trackers or []
        self._epoch_seconds: dict[int, list[float]] = {}
        self._cycle_seconds: list[float] = []

    @classmethod
    def open(cls, run_dir: Path, is_main: bool, tracker_names: list[str],
             config: dict[str, Any] | None = None, **start: Any) -> Telemetry:
        """Rank 0: append to RUN_DIR/metrics.jsonl and start the trackers; others: a quiet one."""
        if not is_main:
            return cls()
        stream = MetricsStream(Path(run_dir) / METRICS_NAME)
        trackers = tracking.open_trackers(tracker_names, Path(run_dir), config or {})
        telemetry = cls(stream, trackers)
        telemetry._record("start", **start)
        return telemetry

    def _record(self, event: str, **fields: Any) -> None:
        if self.stream is not None:
            self.stream.write(event, **fields)

    def _track(self, values: dict[str, Any], step: int) -> None:
        if self.trackers:
            tracking.log_to(self.trackers, values, step)

    def step(self, cycle: int, epoch: int, step: int, *, epochs: int, steps_per_epoch: int,
             lr: float, samples_per_s: float, **loss_parts: float) -> None:
        """Every run.log_every steps: rank 0's batch losses (no line: that is the bar's job)."""
        self._record("step", cycle=cycle, epoch=epoch, step=step, lr=lr,
                     samples_per_s=samples_per_s, **loss_parts)
        global_step = (cycle * epochs + epoch) * max(steps_per_epoch, 1) + step
        self._track({**{f"step/{k}": v for k, v in loss_parts.items()}, "step/lr": lr,
                     "step/samples_per_s": samples_per_s}, global_step)

    def epoch(self, cycle: int, epoch: int, epochs: int, *, samples: int, seconds: float,
              lr: float, **loss_parts: float) -> None:
        """One line per epoch: loss parts, throughput, ETA for the rest of the cycle's training."""
        rate = samples / seconds if seconds > 0 else 0.0
        self._record("epoch", cycle=cycle, epoch=epoch, lr=lr, samples=samples, seconds=seconds,
                     samples_per_s=rate, **loss_parts)
        self._track({**{f"train/{k}": v for k, v in loss_parts.items()}, "train/lr": lr,
                     "train/samples_per_s": rate}, cycle * epochs + epoch)
        done = self._epoch_seconds.setdefault(cycle, [])
        done.append(seconds)
        eta = (epochs - epoch - 1) * sum(done) / len(done)
        log.info("cycle %d epoch %d/%d: %s; %d samples in %.1fs (%.0f samples/s), lr %.4g; "
                 "training ETA %s", cycle, epoch + 1, epochs, _loss_text(loss_parts), samples,
                 seconds, rate, lr, format_duration(eta))

    def phase(self, cycle: int, name: str, seconds: float, items: int, unit: str = "samples",
              **result: Any) -> None:
        """One line when evaluation or scoring ends: items, throughput, the phase's result."""
        rate = items / seconds if seconds > 0 else 0.0
        self._record("phase", cycle=cycle, phase=name, seconds=seconds, items=items,
                     items_per_s=rate, **result)
        self._track({f"{name}/seconds": seconds, f"{name}/{unit}_per_s": rate,
                     **{f"{name}/{k}": v for k, v in result.items()}}, cycle)
        extra = "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}"
                        for k, v in result.items())
        log.info("cycle %d %s: %d %s in %.1fs (%.0f %s/s)%s", cycle, name, items, unit, seconds,
                 rate, unit, extra)

    def cycle(self, cycle: int, cycles: int, metrics: dict[str, Any], where: Path | str) -> None:
        """The committed cycle: accuracy against labels, seconds per phase, ETA for the run."""
        seconds = {p: float(metrics.get("seconds", {}).get(p, 0.0)) for p in PHASES}
        self._record("cycle", cycle=cycle, labeled=metrics.get("labeled"),
                     accuracy=metrics.get("accuracy"), queried=metrics.get("queried"),
                     seconds=seconds)
        if metrics.get("labeled") is not None and metrics.get("accuracy") is not None:
            self._track({"al/accuracy": metrics["accuracy"]}, int(metrics["labeled"]))
        self._track({f"al/seconds_{p}": s for p, s in seconds.items()}, cycle)
        total = sum(seconds.values())
        self._cycle_seconds.append(total)
        eta = (cycles - cycle - 1) * sum(self._cycle_seconds) / len(self._cycle_seconds)
        accuracy = metrics.get("accuracy")
        log.info("cycle %d/%d committed in %s: accuracy %s with %s labels, %s queried -> %s; "
                 "run ETA %s", cycle + 1, cycles, format_duration(total),
                 "unknown" if accuracy is None else f"{accuracy:.4f}",
                 metrics.get("labeled"), metrics.get("queried"), where, format_duration(eta))

    def close(self) -> None:
        tracking.finish(self.trackers)
        self.trackers = []
        if self.stream is not None:
            self.stream.close()
            self.stream = None
