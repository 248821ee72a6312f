"""Numbers across seeds: per-cycle accuracy, paired comparisons with Random, phase timings.

Conventions (used by every table and plot of the report):
- accuracy in percent;
- std is the sample standard deviation over seeds (n - 1 in the denominator), undefined (NaN)
  for a single seed;
- comparisons with Random are paired by seed: for each seed that both a strategy and Random ran,
  at each cycle both reached,
      difference     d = acc - acc_random                        (percentage points)
      improvement    r = (acc - acc_random) / acc_random * 100   (percent of Random's accuracy)
  then mean, std and n over those seeds. Pairing removes the seed-to-seed spread that both runs
  share (the same initial set and candidate subsets), so a gap larger than the paired std is a gap
  larger than the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tidal_dist.report.collect import Series

NAN = float("nan")


@dataclass
class Spread:
    mean: float
    std: float  # sample std (ddof=1); NaN when n < 2
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        v = np.asarray(values, dtype=np.float64)
        if len(v) == 0:
            return cls(NAN, NAN, 0)
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else NAN, len(v))


@dataclass
class CycleRow:
    cycle: int
    labeled: int
    accuracy: Spread
    difference: Spread | None = None  # vs Random, paired by seed (None for Random itself)
    improvement: Spread | None = None


def accuracy_at(series: Series, cycle: int) -> dict[int, float]:
    """seed -> accuracy (%) at `cycle`, for the runs that committed it."""
    return {r.seed: 100.0 * float(r.cycles[cycle]["accuracy"])
            for r in series.runs if cycle < len(r.cycles)}


def labeled_at(series: Series, cycle: int) -> int:
    values = [int(r.cycles[cycle]["labeled"]) for r in series.runs if cycle < len(r.cycles)]
    return int(round(float(np.mean(values))))


def num_cycles(series: Series) -> int:
    return max(len(r.cycles) for r in series.runs)


def cycle_rows(series: Series, baseline: Series | None) -> list[CycleRow]:
    rows = []
    for k in range(num_cycles(series)):
        acc = accuracy_at(series, k)
        row = CycleRow(cycle=k, labeled=labeled_at(series, k), accuracy=Spread.of(list(acc.values())))
        if baseline is not None and baseline is not series:
            base = accuracy_at(baseline, k)
            seeds = sorted(set(acc) & set(base))
            row.difference = Spread.of([acc[s] - base[s] for s in seeds])
            row.improvement = Spread.of([(acc[s] - base[s]) / base[s] * 100.0 for s in seeds
                                         if base[s] > 0])
        rows.append(row)
    return rows


# The TiDAL paper's ablation: each TD-module score against the classifier's own version of it.
MODULE_VS_CLASSIFIER = (("tidal_entropy", "entropy"), ("tidal_margin", "margin"))


def same_training_pairs(series: list[Series]) -> list[tuple[Series, Series]]:
    """(module series, classifier series) trained with the same objective: a TiDAL strategy
    under its own objective (auto or tidal) and the classifier's score under
    train.objective=tidal (the paper's ablation), when both are in the protocol."""
    pairs = []
    for module, classifier in MODULE_VS_CLASSIFIER:
        a = next((x for x in series if x.strategy == module and x.objective in ("auto", "tidal")), None)
        b = next((x for x in series if x.strategy == classifier and x.objective == "tidal"), None)
        if a is not None and b is not None:
            pairs.append((a, b))
    return pairs


def phase_seconds(series: Series) -> dict[str, Spread]:
    """Seconds per cycle spent in each phase, over every committed cycle of every seed."""
    values: dict[str, list[float]] = {}
    for run in series.runs:
        for m in run.cycles:
            for phase, s in (m.get("seconds") or {}).items():
                values.setdefault(phase, []).append(float(s))
    order = ["train", "evaluate", "score", "select", "commit"]
    phases = [p for p in order if p in values] + sorted(set(values) - set(order))
    return {p: Spread.of(values[p]) for p in phases}


def per_cycle_values(series: Series, key: str, sub: str | None = None) -> list[Spread]:
    """Mean/std/n over seeds of metrics[key] (or metrics[key][sub]) at each cycle."""
    out = []
    for k in range(num_cycles(series)):
        vals = []
        for r in series.runs:
            if k < len(r.cycles):
                v = r.cycles[k].get(key)
                if sub is not None:
                    v = v.get(sub) if isinstance(v, dict) else None
                if isinstance(v, (int, float)) and math.isfinite(v):
                    vals.append(float(v))
        out.append(Spread.of(vals))
    return out


def plateau_change(losses: list[float], stop: int) -> float:
    """Relative change (%) of a training curve over the last fifth of its first `stop` epochs:
    mean of the last fifth against the mean of the fifth before it. A small value says the
    curve had flattened by then; a large negative one, that it was still falling. Fifths, not
    tenths: with a few steps per epoch at a high LR, single epochs are noisy (+-5% at 8 steps)."""
    curve = np.asarray(losses[:stop], dtype=np.float64)
    fifth = max(1, len(curve) // 5)
    if len(curve) < 2 * fifth or not np.isfinite(curve).all():
        return NAN
    before, last = curve[-2 * fifth:-fifth].mean(), curve[-fifth:].mean()
    return float((last - before) / before * 100.0) if before > 0 else NAN


def first_decay_epoch(config: dict) -> int:
    """The epoch of the first LR drop (train.lr_decay_at, as the trainer rounds it), or the end."""
    epochs = int(config.get("train.epochs", 0))
    fractions = config.get("train.lr_decay_at") or []
    return min([max(1, round(float(f) * epochs)) for f in fractions] + [epochs])


def convergence(series: Series, part: str) -> list[Spread]:
    """Per cycle, over seeds: plateau_change of one loss part (metrics.json's per-epoch "train"
    records, e.g. "loss" or "kl") before the first LR drop."""
    out = []
    for k in range(num_cycles(series)):
        vals = []
        for r in series.runs:
            epochs = r.cycles[k].get("train") if k < len(r.cycles) else None
            if epochs and all(part in e for e in epochs):
                v = plateau_change([float(e[part]) for e in epochs], first_decay_epoch(r.config))
                if math.isfinite(v):
                    vals.append(v)
        out.append(Spread.of(vals))
    return out


def mean_histogram(series: Series, cycle: int, key: str = "queried_histogram") -> np.ndarray | None:
    """Per-class counts averaged over the seeds that committed `cycle`."""
    hists = [np.asarray(r.cycles[cycle][key], dtype=np.float64) for r in series.runs
             if cycle < len(r.cycles) and r.cycles[cycle].get(key) is not None]
    if not hists or len({len(h) for h in hists}) != 1:
        return None
    return np.mean(hists, axis=0)


def flatten_scalars(value: object, prefix: str = "") -> dict[str, float]:
    """{'a': {'b': 1.0}, 'c': 2} -> {'a.b': 1.0, 'c': 2.0}; lists and strings left out."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten_scalars(v, f"{prefix}{k}."))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix.rstrip(".")] = float(value)
    return out
