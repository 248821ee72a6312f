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
  larger than the noise;
- a paired difference also gets a 95% confidence interval for its mean, Student's t with n - 1
  degrees of freedom: mean ± t_{0.975, n-1} * std / sqrt(n) (undefined for n < 2). The t quantile
  is computed here (t_quantile), not taken from scipy;
- balanced accuracy is the mean of the per-class accuracies on the test split; the minority
  classes of an imbalanced protocol are the tail half of the classes (classes C/2..C-1 in
  data/imbalance.py's order, whose counts fall from class 0, the head, to class C-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tidal_dist.report.collect import Series

NAN = float("nan")


def t_two_sided_mass(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom: the finite
    series of Abramowitz & Stegun 26.7.3 (odd dof) and 26.7.4 (even dof), with
    theta = atan(t / sqrt(dof))."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1 (got {dof})")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2 == 0:  # sin(th) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(dof-2))
        term, total = 1.0, 1.0
        for j in range(1, dof // 2):
            term *= c2 * (2 * j - 1) / (2 * j)
            total += term
        return s * total
    # 2/pi * (theta + sin(th) cos(th) (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ... up to cos^(dof-3)))
    if dof == 1:
        return 2.0 / math.pi * theta
    term, total = 1.0, 1.0
    for j in range(1, (dof - 1) // 2):
        term *= c2 * (2 * j) / (2 * j + 1)
        total += term
    return 2.0 / math.pi * (theta + s * math.cos(theta) * total)


def t_quantile(level: float, dof: int) -> float:
    """The t with P(|T| < t) = level (two-sided; 0.95 gives t_{0.975, dof}), by bisection on
    t_two_sided_mass, which rises monotonically in t."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1) (got {level})")
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, dof) < level:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_mass(mid, dof) < level else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


CONFIDENCE = 0.95


@dataclass
class Spread:
    mean: float
    std: float  # sample std (ddof=1); NaN when n < 2
    n: int

    @property
    def half_width(self) -> float:
        """Half the 95% t-interval of the mean: t_{0.975, n-1} * std / sqrt(n); NaN for n < 2."""
        if self.n < 2 or not math.isfinite(self.std):
            return NAN
        return t_quantile(CONFIDENCE, self.n - 1) * self.std / math.sqrt(self.n)

    @property
    def interval(self) -> tuple[float, float]:
        h = self.half_width
        return (self.mean - h, self.mean + h)

    @property
    def excludes_zero(self) -> bool:
        """True when the 95% interval lies wholly above or below zero (never for n < 2)."""
        lo, hi = self.interval
        return math.isfinite(lo) and (lo > 0 or hi < 0)

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


def class_accuracy_at(series: Series, cycle: int, kind: str) -> dict[int, float]:
    """seed -> balanced ("balanced": mean over classes) or minority-class ("minority": pooled over
    the tail half of the classes) test accuracy (%) at `cycle`, for the runs that recorded
    per-class counts (metrics test_per_class_correct / test_per_class_seen)."""
    out = {}
    for r in series.runs:
        m = r.cycles[cycle] if cycle < len(r.cycles) else {}
        correct, seen = m.get("test_per_class_correct"), m.get("test_per_class_seen")
        if not correct or not seen or len(correct) != len(seen):
            continue
        c, n = np.asarray(correct, dtype=np.float64), np.asarray(seen, dtype=np.float64)
        if kind == "balanced":
            present = n > 0
            out[r.seed] = 100.0 * float(np.mean(c[present] / n[present]))
        else:
            tail = slice(len(n) // 2, None)
            if n[tail].sum() > 0:
                out[r.seed] = 100.0 * float(c[tail].sum() / n[tail].sum())
    return out


def class_accuracy_rows(series: Series, baseline: Series | None, kind: str) -> list[CycleRow]:
    """cycle_rows for balanced or minority-class accuracy; empty when no run recorded it."""
    rows = []
    for k in range(num_cycles(series)):
        acc = class_accuracy_at(series, k, kind)
        if not acc:
            continue
        row = CycleRow(cycle=k, labeled=labeled_at(series, k), accuracy=Spread.of(list(acc.values())))
        if baseline is not None and baseline is not series:
            base = class_accuracy_at(baseline, k, kind)
            seeds = sorted(set(acc) & set(base))
            row.difference = Spread.of([acc[s] - base[s] for s in seeds])
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


# The other training-dynamics strategies TiDAL is compared with, paired by seed: measured TD
# (td_measured_*, label_dispersion), dynamicAL and TOD.
TD_FAMILY = ("td_measured_entropy", "td_measured_margin", "label_dispersion", "dynamical", "tod")
TIDAL_STRATEGIES = tuple(module for module, _ in MODULE_VS_CLASSIFIER)


def td_family_pairs(series: list[Series]) -> list[tuple[Series, Series]]:
    """(TiDAL series, other TD-family series), each under its own objective, for every such pair
    in the protocol: the direct comparisons of predicted training dynamics with measured ones and
    with dynamicAL and TOD."""
    own = [x for x in series if x.objective == "auto"]
    tidal = [x for name in TIDAL_STRATEGIES for x in own if x.strategy == name]
    family = [x for name in TD_FAMILY for x in own if x.strategy == name]
    return [(a, b) for a in tidal for b in family]


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
