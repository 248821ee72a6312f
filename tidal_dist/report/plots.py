"""The report's figures (matplotlib, Agg backend), each written atomically as a PNG."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tidal_dist.job.fsutil import atomic_write  # noqa: E402
from tidal_dist.report import stats  # noqa: E402
from tidal_dist.report.collect import Protocol, Series  # noqa: E402
from tidal_dist.report.datamaps import DataMap  # noqa: E402

PHASE_COLORS = {"train": "#4c72b0", "evaluate": "#55a868", "score": "#c44e52",
                "select": "#8172b2", "commit": "#937860"}
MAX_POINTS = 20000  # per data-map panel: beyond this a scatter is a blot; subsample (seeded)
MAX_CLASS_BARS = 20  # above this many classes, histograms bin classes from head to tail


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def colors(protocol: Protocol) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {s.label: cycle[i % len(cycle)] for i, s in enumerate(protocol.series)}


def _band(ax, x, spreads: list[stats.Spread], label: str, color: str, scale: float = 1.0,
          style: str = "-") -> None:
    mean = np.array([s.mean for s in spreads]) * scale
    std = np.array([s.std if s.n > 1 else 0.0 for s in spreads]) * scale
    ax.plot(x, mean, style, marker="o", ms=3, color=color, label=label)
    if any(s.n > 1 for s in spreads):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, lw=0)


def accuracy_curves(protocol: Protocol, rows: dict[str, list[stats.CycleRow]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    col = colors(protocol)
    for s in protocol.series:
        r = rows[s.label]
        _band(ax, [x.labeled for x in r], [x.accuracy for x in r],
              f"{s.label} (n={len(s.runs)})", col[s.label])
    ax.set_title(f"{protocol.dataset}: test accuracy vs labels (mean ± std over seeds)")
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def relative_curves(protocol: Protocol, rows: dict[str, list[stats.CycleRow]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    col = colors(protocol)
    ax.axhline(0.0, color="black", lw=0.8)
    for s in protocol.series:
        r = [x for x in rows[s.label] if x.improvement is not None and x.improvement.n > 0]
        if not r:
            continue
        n = max(x.improvement.n for x in r)
        _band(ax, [x.labeled for x in r], [x.improvement for x in r],
              f"{s.label} (n={n} seed{'s' if n != 1 else ''})", col[s.label])
    ax.set_title(f"{protocol.dataset}: relative improvement over Random (paired by seed)")
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("(acc − acc_random) / acc_random (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def class_order(protocol: Protocol, classes: int) -> np.ndarray:
    """Classes from the most to the least frequent in the first cycle's labeled set (a random
    draw of the pool, so head to tail of an imbalanced pool); ties by class index."""
    counts = np.zeros(classes)
    for s in protocol.series:
        h = stats.mean_histogram(s, 0, "labeled_histogram")
        if h is not None and len(h) == classes:
            counts += h
    return np.lexsort((np.arange(classes), -counts))


def class_histograms(protocol: Protocol, path: Path) -> Path | None:
    cycles = max(stats.num_cycles(s) for s in protocol.series)
    hists = {(s.label, k): stats.mean_histogram(s, k) for s in protocol.series for k in range(cycles)}
    sizes = {len(h) for h in hists.values() if h is not None}
    if len(sizes) != 1:
        return None
    classes = sizes.pop()
    order = class_order(protocol, classes)
    binned = classes > MAX_CLASS_BARS
    bins = np.array_split(order, MAX_CLASS_BARS) if binned else [np.array([c]) for c in range(classes)]
    cols = min(cycles, 4)
    rows_n = math.ceil(cycles / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 2.8 * rows_n), squeeze=False)
    col = colors(protocol)
    width = 0.8 / len(protocol.series)
    for k in range(rows_n * cols):
        ax = axes[k // cols][k % cols]
        if k >= cycles:
            ax.axis("off")
            continue
        for i, s in enumerate(protocol.series):
            h = hists[(s.label, k)]
            if h is None:
                continue
            y = np.array([h[b].sum() for b in bins])
            ax.bar(np.arange(len(bins)) + (i - (len(protocol.series) - 1) / 2) * width, y,
                   width=width, color=col[s.label], label=s.label)
        ax.set_title(f"cycle {k}", fontsize=9)
        ax.set_xlabel("classes, head → tail (binned)" if binned else "class", fontsize=8)
        ax.set_ylabel("queried (mean over seeds)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{protocol.dataset}: classes of the queried samples per cycle")
    return save(fig, path)


def phase_seconds(protocol: Protocol, seconds: dict[str, dict[str, stats.Spread]],
                  path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.5 * len(protocol.series) + 1.6))
    labels = [s.label for s in protocol.series]
    left = np.zeros(len(labels))
    phases = []
    for per in seconds.values():
        phases += [p for p in per if p not in phases]
    for phase in phases:
        widths = np.array([seconds[lab].get(phase, stats.Spread(0.0, 0.0, 0)).mean for lab in labels])
        widths = np.nan_to_num(widths)
        ax.barh(labels, widths, left=left, color=PHASE_COLORS.get(phase), label=phase)
        left += widths
    ax.set_title(f"{protocol.dataset}: seconds per cycle by phase (mean over cycles and seeds)")
    ax.set_xlabel("seconds per cycle")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=len(phases), loc="upper center", bbox_to_anchor=(0.5, -0.28),
              frameon=False)
    ax.grid(alpha=0.3, axis="x")
    return save(fig, path)


def module_kl(protocol: Protocol, curves: dict[str, dict[str, list[stats.Spread]]],
              labeled: dict[str, list[int]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    col = colors(protocol)
    for s in protocol.series:
        c = curves.get(s.label)
        if not c:
            continue
        x = labeled[s.label]
        _band(ax, x, c["kl_td_module"], f"{s.label}: KL(TD ‖ TD module)", col[s.label])
        _band(ax, x, c["kl_td_classifier"], f"{s.label}: KL(TD ‖ classifier)", col[s.label],
              style="--")
    ax.set_title(f"{protocol.dataset}: module analysis on the labeled set (cycle end)")
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("mean KL divergence (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def data_map(title: str, maps: list[tuple[int, DataMap]], path: Path) -> Path:
    cols = min(len(maps), 4)
    rows_n = math.ceil(len(maps) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.4 * cols + 1.0, 3.0 * rows_n + 0.5),
                             squeeze=False, layout="constrained")
    scatter = None
    for i in range(rows_n * cols):
        ax = axes[i // cols][i % cols]
        if i >= len(maps):
            ax.axis("off")
            continue
        k, dm = maps[i]
        pick = np.arange(len(dm.ids))
        if len(pick) > MAX_POINTS:
            pick = np.sort(np.random.default_rng(k).choice(pick, MAX_POINTS, replace=False))
        scatter = ax.scatter(dm.variability[pick], dm.confidence[pick], c=dm.correctness[pick],
                             cmap="coolwarm_r", vmin=0.0, vmax=1.0, s=6, alpha=0.7, lw=0)
        ax.set_title(f"cycle {k} ({len(dm.ids)} labeled)", fontsize=9)
        ax.set_xlabel("variability", fontsize=8)
        ax.set_ylabel("confidence", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(-0.01, max(0.5, float(np.max(dm.variability, initial=0.0)) + 0.02))
        ax.tick_params(labelsize=7)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes.ravel().tolist(), shrink=0.8, label="correctness")
    fig.suptitle(title, fontsize=10)
    # constrained layout places the colorbar and title; tight_layout would undo it
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


__all__ = ["Series", "accuracy_curves", "class_histograms", "data_map", "module_kl",
           "phase_seconds", "relative_curves"]
