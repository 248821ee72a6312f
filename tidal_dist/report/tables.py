"""The report's tables: CSV (full precision, for scripts) and markdown (rounded, for reading).

accuracy.csv columns, one row per (cycle, series):
    cycle, labeled, strategy, objective, n, acc_mean, acc_std,
    diff_mean, diff_std, diff_n        paired difference vs Random, percentage points
    rel_mean, rel_std, rel_n           paired relative improvement over Random, percent
    diff_ci_low, diff_ci_high          95% t-interval of diff_mean (n - 1 dof; stats.py)
    diff_ci_excludes_zero              1 when that interval lies wholly above or below 0, else 0
Empty cells: undefined (a std of one seed; no Random run; Random itself).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from tidal_dist.job.fsutil import atomic_write_text
from tidal_dist.report.collect import Protocol, Series
from tidal_dist.report.stats import CycleRow, Spread

ACCURACY_COLUMNS = ["cycle", "labeled", "strategy", "objective", "n", "acc_mean", "acc_std",
                    "diff_mean", "diff_std", "diff_n", "rel_mean", "rel_std", "rel_n",
                    "diff_ci_low", "diff_ci_high", "diff_ci_excludes_zero"]


def cell(x: float | int | str | None) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if math.isnan(x) else repr(x)
    return str(x)


def write_csv(path: Path, columns: list[str], rows: list[list]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([cell(v) for v in row])
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def pm(s: Spread | None, digits: int = 2, n: bool = False) -> str:
    """'81.20 ± 0.35' (± omitted for one value, '–' for none); with n: '(n=3)' appended."""
    if s is None or s.n == 0:
        return "–"
    text = f"{s.mean:.{digits}f}" + ("" if math.isnan(s.std) else f" ± {s.std:.{digits}f}")
    return text + (f" (n={s.n})" if n else "")


def ci(s: Spread | None, digits: int = 2) -> str:
    """'[+0.52, +1.90]' for a paired difference's 95% t-interval, in bold when it excludes zero;
    '–' where undefined (one seed, no pairing)."""
    if s is None or s.n < 2 or math.isnan(s.half_width):
        return "–"
    lo, hi = s.interval
    text = f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return f"**{text}**" if s.excludes_zero else text


def ci_cells(s: Spread | None) -> list:
    """The CSV's diff_ci_low, diff_ci_high, diff_ci_excludes_zero cells."""
    if s is None or s.n < 2:
        return [None, None, None]
    lo, hi = s.interval
    return [lo, hi, int(s.excludes_zero)]


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def accuracy_table(protocol: Protocol, rows: dict[str, list[CycleRow]], folder: Path) -> str:
    """Write accuracy.csv; return the markdown table (also written as accuracy.md)."""
    csv_rows, md_rows = [], []
    cycles = max(len(r) for r in rows.values())
    for k in range(cycles):
        for s in protocol.series:
            if k >= len(rows[s.label]):
                continue
            r = rows[s.label][k]
            d, i = r.difference, r.improvement
            csv_rows.append([k, r.labeled, s.strategy, s.objective, r.accuracy.n, r.accuracy.mean,
                             r.accuracy.std, d.mean if d else None, d.std if d else None,
                             d.n if d else None, i.mean if i else None, i.std if i else None,
                             i.n if i else None] + ci_cells(d))
            md_rows.append([str(k), str(r.labeled), s.label, str(r.accuracy.n), pm(r.accuracy),
                            pm(d, n=True) if d is not None else "–", ci(d),
                            pm(i) if i is not None else "–"])
    write_csv(folder / "accuracy.csv", ACCURACY_COLUMNS, csv_rows)
    text = markdown(["cycle", "labels", "strategy", "seeds", "accuracy % (mean ± std)",
                     "Δ vs Random, pp (paired)", "95% CI of Δ", "vs Random, % (paired)"], md_rows)
    atomic_write_text(folder / "accuracy.md", text)
    return text


def _paired_rows(pairs: list[tuple[Series, Series, list[CycleRow], list[CycleRow]]]
                 ) -> tuple[list[list], list[list[str]]]:
    """CSV and markdown rows of (first, second) series pairs: per cycle both accuracies and their
    difference paired by seed (first minus second, percentage points) with its 95% interval.
    `pairs`: (first series, second series, first's rows paired with the second series, the
    second's own rows)."""
    csv_rows, md_rows = [], []
    for first, second, rows, second_rows in pairs:
        for r, c in zip(rows, second_rows):
            d = r.difference
            csv_rows.append([r.cycle, r.labeled, first.label, second.label, r.accuracy.mean,
                             r.accuracy.std, r.accuracy.n, c.accuracy.mean, c.accuracy.std,
                             c.accuracy.n, d.mean, d.std, d.n] + ci_cells(d))
            md_rows.append([str(r.cycle), str(r.labeled), f"{first.label} vs {second.label}",
                            pm(r.accuracy), pm(c.accuracy), pm(d, n=True), ci(d)])
    return csv_rows, md_rows


def _paired_csv_columns(first: str, second: str) -> list[str]:
    return ["cycle", "labeled", f"{first}_series", f"{second}_series", f"{first}_acc_mean",
            f"{first}_acc_std", f"{first}_acc_n", f"{second}_acc_mean", f"{second}_acc_std",
            f"{second}_acc_n", "diff_mean", "diff_std", "diff_n", "diff_ci_low", "diff_ci_high",
            "diff_ci_excludes_zero"]


def same_training_table(pairs: list[tuple[Series, Series, list[CycleRow], list[CycleRow]]],
                        folder: Path) -> str:
    """same_training.csv / markdown: per cycle and (module, classifier) pair, both accuracies and
    their difference paired by seed (module minus classifier, percentage points)."""
    csv_rows, md_rows = _paired_rows(pairs)
    write_csv(folder / "same_training.csv", _paired_csv_columns("module", "classifier"), csv_rows)
    return markdown(["cycle", "labels", "module score vs classifier score", "module %",
                     "classifier %", "Δ module − classifier, pp (paired)", "95% CI of Δ"],
                    md_rows)


def td_family_table(pairs: list[tuple[Series, Series, list[CycleRow], list[CycleRow]]],
                    folder: Path) -> str:
    """td_family.csv / markdown: per cycle and (TiDAL series, other TD-family series) pair, both
    accuracies and their difference paired by seed (TiDAL minus the other, percentage points)."""
    csv_rows, md_rows = _paired_rows(pairs)
    write_csv(folder / "td_family.csv", _paired_csv_columns("tidal", "other"), csv_rows)
    return markdown(["cycle", "labels", "TiDAL vs other TD strategy", "TiDAL %", "other %",
                     "Δ TiDAL − other, pp (paired)", "95% CI of Δ"], md_rows)


def class_accuracy_table(protocol: Protocol, balanced: dict[str, list[CycleRow]],
                         minority: dict[str, list[CycleRow]], folder: Path) -> str:
    """class_accuracy.csv / markdown: per (cycle, series), balanced accuracy (mean of the
    per-class test accuracies) and minority-class accuracy (tail half of the classes), each with
    its paired difference vs Random and that difference's 95% t-interval."""
    csv_rows, md_rows = [], []
    cycles = max((len(r) for r in balanced.values()), default=0)
    for k in range(cycles):
        for s in protocol.series:
            b = next((r for r in balanced.get(s.label, []) if r.cycle == k), None)
            m = next((r for r in minority.get(s.label, []) if r.cycle == k), None)
            if b is None:
                continue
            row = [k, b.labeled, s.strategy, s.objective]
            for r in (b, m):
                d = r.difference if r is not None else None
                row += ([r.accuracy.mean, r.accuracy.std, r.accuracy.n] if r else [None] * 3)
                row += ([d.mean, d.std, d.n] if d else [None] * 3) + ci_cells(d)
            csv_rows.append(row)
            md_rows.append([str(k), str(b.labeled), s.label, pm(b.accuracy), pm(b.difference), ci(b.difference),
                            pm(m.accuracy) if m else "–", pm(m.difference) if m else "–",
                            ci(m.difference) if m else "–"])
    columns = ["cycle", "labeled", "strategy", "objective"]
    for name in ("balanced", "minority"):
        columns += [f"{name}_acc_mean", f"{name}_acc_std", f"{name}_acc_n", f"{name}_diff_mean",
                    f"{name}_diff_std", f"{name}_diff_n", f"{name}_diff_ci_low",
                    f"{name}_diff_ci_high", f"{name}_diff_ci_excludes_zero"]
    write_csv(folder / "class_accuracy.csv", columns, csv_rows)
    return markdown(["cycle", "labels", "strategy", "balanced acc %", "Δ vs Random, pp",
                     "95% CI", "minority-class acc %", "Δ vs Random, pp", "95% CI"], md_rows)


def measured_cost_table(protocol: Protocol, cost: dict[tuple[str, str], dict[str, list]],
                        labeled: dict[str, list[int]], folder: Path) -> str:
    """measured_td.csv / markdown: per (cycle, series, path) that measured candidate TD, the
    measurements' seconds, their ratio to the cycle's training and their number (mean ± std
    over the seeds that measured on that path, listed)."""
    csv_rows, md_rows = [], []
    for s in protocol.series:
        for (label, path), c in cost.items():
            if label != s.label:
                continue
            seeds = ", ".join(map(str, c["seeds"]))
            for k, (sec, ratio, n) in enumerate(zip(c["seconds"], c["ratio"], c["measurements"])):
                csv_rows.append([k, labeled[s.label][k], s.strategy, s.objective, path, sec.mean,
                                 sec.std, ratio.mean, ratio.std, n.mean, sec.n])
                md_rows.append([str(k), str(labeled[s.label][k]), s.label, f"{path} ({seeds})",
                                pm(sec, 1), pm(ratio, 2), pm(n, 0)])
    write_csv(folder / "measured_td.csv", ["cycle", "labeled", "strategy", "objective", "path",
                                           "seconds_mean", "seconds_std", "ratio_mean",
                                           "ratio_std", "measurements", "n"], csv_rows)
    return markdown(["cycle", "labels", "strategy", "candidates (seeds)", "measuring s",
                     "÷ training s", "measurements"], md_rows)


def seconds_table(protocol: Protocol, seconds: dict[str, dict[str, Spread]], folder: Path) -> str:
    phases: list[str] = []
    for per in seconds.values():
        phases += [p for p in per if p not in phases]
    csv_rows, md_rows = [], []
    for s in protocol.series:
        per = seconds[s.label]
        for p in phases:
            if p in per:
                csv_rows.append([s.strategy, s.objective, p, per[p].mean, per[p].std, per[p].n])
        total = sum(per[p].mean for p in per)
        md_rows.append([s.label] + [pm(per.get(p), 1) for p in phases] + [f"{total:.1f}"])
    write_csv(folder / "seconds.csv", ["strategy", "objective", "phase", "seconds_mean",
                                       "seconds_std", "n"], csv_rows)
    return markdown(["strategy"] + [f"{p} s" for p in phases] + ["total s/cycle"], md_rows)


def module_table(protocol: Protocol, curves: dict[str, dict[str, list[Spread]]],
                 labeled: dict[str, list[int]], folder: Path) -> str:
    csv_rows, md_rows = [], []
    for s in protocol.series:
        c = curves.get(s.label)
        if not c:
            continue
        for k, (m, cl) in enumerate(zip(c["kl_td_module"], c["kl_td_classifier"])):
            csv_rows.append([k, labeled[s.label][k], s.strategy, s.objective, m.mean, m.std, m.n,
                             cl.mean, cl.std, cl.n])
            md_rows.append([str(k), str(labeled[s.label][k]), s.label, pm(m, 4), pm(cl, 4)])
    write_csv(folder / "module_kl.csv", ["cycle", "labeled", "strategy", "objective",
                                         "kl_td_module_mean", "kl_td_module_std", "kl_td_module_n",
                                         "kl_td_classifier_mean", "kl_td_classifier_std",
                                         "kl_td_classifier_n"], csv_rows)
    return markdown(["cycle", "labels", "strategy", "KL(TD ‖ TD module)", "KL(TD ‖ classifier)"],
                    md_rows)


def histogram_table(protocol: Protocol, hists: dict[tuple[str, int], list[float] | None],
                    folder: Path) -> None:
    rows = []
    for s in protocol.series:
        k = 0
        while (s.label, k) in hists:
            h = hists[(s.label, k)]
            if h is not None:
                rows += [[k, s.strategy, s.objective, c, v] for c, v in enumerate(h)]
            k += 1
    write_csv(folder / "queried_classes.csv",
              ["cycle", "strategy", "objective", "class", "queried_mean"], rows)


def ablation_table(protocol: Protocol, values: dict[tuple[str, int, str], dict[str, Spread]],
                   labeled: dict[str, list[int]], folder: Path) -> str:
    """Rows (series, cycle, score); a column per scalar the runs logged for that score."""
    keys: list[str] = []
    for per in values.values():
        keys += [k for k in per if k not in keys]
    series = {s.label: s for s in protocol.series}
    csv_rows, md_rows = [], []
    for (label, k, score), per in values.items():
        s: Series = series[label]
        csv_rows.append([k, labeled[label][k], s.strategy, s.objective, score]
                        + [per[c].mean if c in per else None for c in keys]
                        + [max((v.n for v in per.values()), default=0)])
        md_rows.append([str(k), str(labeled[label][k]), label, score]
                       + [pm(per.get(c), 4) for c in keys])
    write_csv(folder / "score_ablation.csv",
              ["cycle", "labeled", "strategy", "objective", "score"] + keys + ["n"], csv_rows)
    return markdown(["cycle", "labels", "strategy", "score"] + keys, md_rows)


def training_table(protocol: Protocol, columns: dict[str, dict[str, list[Spread]]],
                   labeled: dict[str, list[int]], folder: Path) -> str:
    """training.csv / markdown: per (cycle, series), each column's mean ± std over seeds.
    `columns` maps a column name to {series label: one Spread per cycle}."""
    names = list(columns)
    csv_rows, md_rows = [], []
    cycles = max(len(v) for per in columns.values() for v in per.values())
    for k in range(cycles):
        for s in protocol.series:
            got = [columns[c].get(s.label, []) for c in names]
            cells = [v[k] if k < len(v) else Spread(math.nan, math.nan, 0) for v in got]
            if not any(c.n for c in cells):
                continue
            csv_rows.append([k, labeled[s.label][k], s.strategy, s.objective]
                            + [x for c in cells for x in (c.mean, c.std, c.n)])
            md_rows.append([str(k), str(labeled[s.label][k]), s.label] + [pm(c) for c in cells])
    write_csv(folder / "training.csv", ["cycle", "labeled", "strategy", "objective"]
              + [f"{c}_{x}" for c in names for x in ("mean", "std", "n")], csv_rows)
    return markdown(["cycle", "labels", "strategy"] + names, md_rows)
