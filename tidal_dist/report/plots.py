"""The report's figures (matplotlib, Agg backend), each written atomically as a PNG.

Every series of a protocol gets one style (series_styles) used by every figure: a colour and a
marker whose pair is unique for up to 100 series (and a dashed line once the colours repeat),
Random in black, TiDAL's strategies (tidal_*) first to a colour, drawn thicker and on top;
std bands only while a plot has few series. Legends sit outside the
plot area. With more than PAIRED_PANELS_ABOVE series, a second figure shows each series' paired
difference vs Random with its 95% t-interval, one small panel per series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


PAIRED_PANELS_ABOVE = 6  # more series than this on one plot: add the paired-difference panels
# Ten qualitative colours that stay apart on screen and in print (no black: Random's), and ten
# markers; series i gets colour i % 10 and marker (i + i // 10) % 10, so no two of the first
# 100 series share both.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
RANDOM_COLOR = "#000000"


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str
    linewidth: float
    markersize: float
    zorder: float
    hatch: str | None = None  # bars of a repeated colour

    def line(self) -> dict:
        return {"color": self.color, "marker": self.marker, "ls": self.linestyle,
                "lw": self.linewidth, "ms": self.markersize, "zorder": self.zorder}


def is_tidal(s: Series) -> bool:
    return s.strategy.startswith("tidal")


def series_styles(series: list[Series]) -> dict[str, Style]:
    """label -> Style: Random black, the others through PALETTE x MARKERS; TiDAL's thicker."""
    styles, i = {}, 0
    # TiDAL's series take the first colours, so a repeated colour never lands on them
    for s in sorted(series, key=lambda x: not is_tidal(x)):
        if s.strategy == "random" and RANDOM_COLOR not in [x.color for x in styles.values()]:
            styles[s.label] = Style(RANDOM_COLOR, "o", "-", 1.4, 4.0, 2.0)
            continue
        color, marker = PALETTE[i % len(PALETTE)], MARKERS[(i + i // len(PALETTE)) % len(MARKERS)]
        repeated = i >= len(PALETTE)
        if is_tidal(s):
            styles[s.label] = Style(color, marker, "-", 2.6, 6.5, 4.0, "//" if repeated else None)
        else:
            styles[s.label] = Style(color, marker, "--" if repeated else "-", 1.3, 4.5, 3.0,
                                    "//" if repeated else None)
        i += 1
    return styles


def save(fig, path: Path, outside: bool = False) -> Path:
    """outside: a legend sits beside the axes; crop to everything drawn instead of tight_layout."""
    if not outside:
        fig.tight_layout()
    extra = {"bbox_inches": "tight", "pad_inches": 0.15} if outside else {}
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, **extra))
    plt.close(fig)
    return path


def colors(protocol: Protocol) -> dict[str, str]:
    return {label: st.color for label, st in series_styles(protocol.series).items()}


def legend_outside(ax, fontsize: float = 8) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=fontsize, frameon=False,
              borderaxespad=0.0)


def _band(ax, x, spreads: list[stats.Spread], label: str, color: str | Style, scale: float = 1.0,
          style: str = "-", band: bool = True) -> None:
    mean = np.array([s.mean for s in spreads]) * scale
    std = np.array([s.std if s.n > 1 else 0.0 for s in spreads]) * scale
    if isinstance(color, Style):
        kw = color.line()
        if style != "-":
            kw["ls"] = style
        band_color = color.color
    else:
        kw = {"ls": style, "marker": "o", "ms": 3, "color": color}
        band_color = color
    ax.plot(x, mean, label=label, **kw)
    if band and any(s.n > 1 for s in spreads):
        ax.fill_between(x, mean - std, mean + std, color=band_color, alpha=0.12, lw=0)


def accuracy_curves(protocol: Protocol, rows: dict[str, list[stats.CycleRow]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    styles = series_styles(protocol.series)
    crowded = len(protocol.series) > PAIRED_PANELS_ABOVE  # a dozen std bands are one blur
    for s in protocol.series:
        r = rows[s.label]
        _band(ax, [x.labeled for x in r], [x.accuracy for x in r],
              f"{s.label} (n={len(s.runs)})", styles[s.label], band=not crowded)
    ax.set_title(f"{protocol.dataset}: test accuracy vs labels (mean"
                 + (" over seeds; intervals: paired-difference figure)" if crowded
                    else " ± std over seeds)"))
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return save(fig, path, outside=True)


def relative_curves(protocol: Protocol, rows: dict[str, list[stats.CycleRow]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    styles = series_styles(protocol.series)
    ax.axhline(0.0, color="black", lw=0.8)
    for s in protocol.series:
        r = [x for x in rows[s.label] if x.improvement is not None and x.improvement.n > 0]
        if not r:
            continue
        n = max(x.improvement.n for x in r)
        _band(ax, [x.labeled for x in r], [x.improvement for x in r],
              f"{s.label} (n={n} seed{'s' if n != 1 else ''})", styles[s.label],
              band=len(protocol.series) <= PAIRED_PANELS_ABOVE)
    ax.set_title(f"{protocol.dataset}: relative improvement over Random (paired by seed)")
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("(acc − acc_random) / acc_random (%)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return save(fig, path, outside=True)


def paired_differences(protocol: Protocol, rows: dict[str, list[stats.CycleRow]], path: Path,
                       what: str = "test accuracy") -> Path | None:
    """One panel per series: its paired difference vs Random (percentage points) at each cycle,
    the mean with its 95% t-interval; a filled marker where the interval excludes zero, a hollow
    one where it does not. Shared y axis, so panels compare at a glance."""
    shown = [s for s in protocol.series
             if any(r.difference is not None and r.difference.n > 0 for r in rows.get(s.label, []))]
    if not shown:
        return None
    styles = series_styles(protocol.series)
    cols = min(4, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 2.5 * nrows + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    for i in range(nrows * cols):
        ax = axes[i // cols][i % cols]
        if i >= len(shown):
            ax.axis("off")
            continue
        s = shown[i]
        st = styles[s.label]
        r = [x for x in rows[s.label] if x.difference is not None and x.difference.n > 0]
        x = np.array([v.labeled for v in r], dtype=float)
        mean = np.array([v.difference.mean for v in r])
        half = np.nan_to_num(np.array([v.difference.half_width for v in r]))
        ax.axhline(0.0, color="black", lw=0.8)
        ax.errorbar(x, mean, yerr=half, color=st.color, ls=st.linestyle, lw=1.4, capsize=3,
                    marker="none")
        for xi, mi, v in zip(x, mean, r):
            ax.plot([xi], [mi], marker=st.marker, ms=6, color=st.color,
                    mfc=st.color if v.difference.excludes_zero else "white", zorder=5)
        n = max(v.difference.n for v in r)
        ax.set_title(f"{s.label} (n={n})", fontsize=9,
                     fontweight="bold" if is_tidal(s) else "normal")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("Δ vs Random (pp)", fontsize=8)
        if i // cols == nrows - 1 or i + cols >= len(shown):
            ax.set_xlabel("labeled samples", fontsize=8)
            ax.tick_params(labelbottom=True)
    fig.suptitle(f"{protocol.dataset}: {what}, paired difference vs Random with 95% t-interval "
                 f"(filled: interval excludes 0)", fontsize=10)
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
    styles = series_styles(protocol.series)
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
                   width=width, color=styles[s.label].color, hatch=styles[s.label].hatch,
                   edgecolor="white" if styles[s.label].hatch else None, lw=0, label=s.label)
        ax.set_title(f"cycle {k}", fontsize=9)
        ax.set_xlabel("classes, head → tail (binned)" if binned else "class", fontsize=8)
        ax.set_ylabel("queried (mean over seeds)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7,
               frameon=False)
    fig.suptitle(f"{protocol.dataset}: classes of the queried samples per cycle")
    fig.tight_layout()
    return save(fig, path, outside=True)


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
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    styles = series_styles(protocol.series)
    for s in protocol.series:
        c = curves.get(s.label)
        if not c:
            continue
        x = labeled[s.label]
        _band(ax, x, c["kl_td_module"], f"{s.label}: KL(TD ‖ TD module)", styles[s.label])
        _band(ax, x, c["kl_td_classifier"], f"{s.label}: KL(TD ‖ classifier)", styles[s.label],
              style=":")
    ax.set_title(f"{protocol.dataset}: module analysis on the labeled set (cycle end)")
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("mean KL divergence (nats)")
    ax.grid(alpha=0.3)
    legend_outside(ax, 7)
    return save(fig, path, outside=True)


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


__all__ = ["Series", "Style", "accuracy_curves", "class_histograms", "data_map", "module_kl",
           "paired_differences", "phase_seconds", "relative_curves", "series_styles"]
