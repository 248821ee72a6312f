"""Build each protocol's figures and tables, then the one-page OUT/report.md and OUT/report.json.

Whatever cannot be drawn (no Random run, no data-map statistics, no module analysis, a
Cartography export refused) is named in `skipped` with the reason, and report.md says so in place
of the figure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tidal_dist.job.fsutil import atomic_write_json, atomic_write_text
from tidal_dist.report import plots, stats, tables
from tidal_dist.report.cartography import ExportRefused, export_cycle
from tidal_dist.report.collect import BASELINE, Protocol, Run, Series
from tidal_dist.report.datamaps import load_datamap

KL_KEYS = ("kl_td_module", "kl_td_classifier")
PROTOCOL_KEYS = ("data.root", "data.imbalance_ratio", "model.backbone", "train.epochs",
                 "train.batch_size", "al.initial", "al.budget", "al.subset_size", "al.subset_seed")


@dataclass
class Section:
    protocol: Protocol
    folder: Path
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)  # name -> markdown
    skipped: dict[str, str] = field(default_factory=dict)  # what -> why
    exports: list[Path] = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def build_protocol(protocol: Protocol, out: Path, cartography_max_classes: int) -> Section:
    folder = out / protocol.slug
    folder.mkdir(parents=True, exist_ok=True)
    sec = Section(protocol=protocol, folder=folder)
    baseline = protocol.baseline()
    rows = {s.label: stats.cycle_rows(s, baseline) for s in protocol.series}
    labeled = {s.label: [r.labeled for r in rows[s.label]] for s in protocol.series}

    sec.figures["accuracy"] = plots.accuracy_curves(protocol, rows, folder / "accuracy.png")
    if baseline is None:
        sec.skipped["relative"] = (f"no Random run ({BASELINE}) under this protocol, so no "
                                   f"relative improvement or paired difference; add "
                                   f"--strategies ...,{BASELINE} to the sweep")
    elif not any(r.improvement is not None and r.improvement.n > 0
                 for s in protocol.series for r in rows[s.label]):
        sec.skipped["relative"] = ("no strategy shares a seed with the Random runs (seeds "
                                   f"{baseline.seeds}): nothing to pair")
    else:
        sec.figures["relative"] = plots.relative_curves(protocol, rows, folder / "relative_to_random.png")
    sec.tables["accuracy"] = tables.accuracy_table(protocol, rows, folder)
    if baseline is not None and len(protocol.series) > plots.PAIRED_PANELS_ABOVE:
        fig = plots.paired_differences(protocol, rows, folder / "paired_difference.png")
        if fig:
            sec.figures["paired_difference"] = fig
    if imbalanced(protocol):
        balanced = {s.label: stats.class_accuracy_rows(s, baseline, "balanced")
                    for s in protocol.series}
        if any(balanced.values()):
            minority = {s.label: stats.class_accuracy_rows(s, baseline, "minority")
                        for s in protocol.series}
            sec.tables["class_accuracy"] = tables.class_accuracy_table(protocol, balanced, minority,
                                                                       folder)
            if baseline is not None:
                fig = plots.paired_differences(protocol, balanced,
                                               folder / "paired_difference_balanced.png",
                                               what="balanced accuracy")
                if fig:
                    sec.figures["paired_difference_balanced"] = fig
        else:
            sec.skipped["class_accuracy"] = ("the runs' metrics hold no per-class test counts "
                                             "(test_per_class_correct): runs of an older version")
    pairs = stats.same_training_pairs(protocol.series)
    if pairs:
        sec.tables["same_training"] = tables.same_training_table(
            [(a, b, stats.cycle_rows(a, b), rows[b.label]) for a, b in pairs], folder)
    elif any(s.strategy.startswith("tidal_") for s in protocol.series):
        sec.skipped["same_training"] = (
            "no classifier-score run under TiDAL's training to pair with; add a sweep with "
            "--strategies entropy,margin train.objective=tidal (same seeds)")

    family = stats.td_family_pairs(protocol.series)
    if family:
        sec.tables["td_family"] = tables.td_family_table(
            [(a, b, stats.cycle_rows(a, b), rows[b.label]) for a, b in family], folder)

    hists = {(s.label, k): stats.mean_histogram(s, k) for s in protocol.series
             for k in range(stats.num_cycles(s))}
    if any(h is not None for h in hists.values()):
        tables.histogram_table(protocol, {k: None if h is None else h.tolist()
                                          for k, h in hists.items()}, folder)
        fig = plots.class_histograms(protocol, folder / "queried_classes.png")
        if fig:
            sec.figures["queried_classes"] = fig
    if "queried_classes" not in sec.figures:
        sec.skipped["queried_classes"] = "the runs' metrics hold no queried_histogram"

    seconds = {s.label: stats.phase_seconds(s) for s in protocol.series}
    sec.figures["seconds"] = plots.phase_seconds(protocol, seconds, folder / "seconds.png")
    sec.tables["seconds"] = tables.seconds_table(protocol, seconds, folder)

    curves = {}
    for s in protocol.series:
        c = {key: stats.per_cycle_values(s, "module_analysis", key) for key in KL_KEYS}
        if any(v.n for v in c["kl_td_module"] + c["kl_td_classifier"]):
            curves[s.label] = c
    if curves:
        sec.figures["module_kl"] = plots.module_kl(protocol, curves, labeled, folder / "module_kl.png")
        sec.tables["module_kl"] = tables.module_table(protocol, curves, labeled, folder)
    else:
        sec.skipped["module_kl"] = "the runs' metrics hold no module_analysis"

    missing = []
    for s in protocol.series:
        run = s.runs[0]  # the lowest seed: one data map per strategy keeps the page readable
        maps = [(k, dm) for k in range(len(run.cycles)) if (dm := load_datamap(run.cycle_dir(k)))]
        if maps:
            name = f"datamap_{slug(s.label)}_seed{run.seed}"
            sec.figures[name] = plots.data_map(
                f"{protocol.dataset}: data map of {s.label}, seed {run.seed} "
                f"(confidence vs variability, colour = correctness)", maps, folder / f"{name}.png")
        else:
            missing.append(f"{s.label} seed {run.seed}")
    if missing:
        sec.skipped["datamaps"] = (f"no td/stats.npy or td/epochs/ in the cycles of "
                                   f"{', '.join(missing)}")

    cost = measured_costs(protocol)
    if cost:
        sec.tables["measured_td"] = tables.measured_cost_table(protocol, cost, labeled, folder)

    training = training_columns(protocol)
    if training:
        sec.tables["training"] = tables.training_table(protocol, training, labeled, folder)

    ablation = ablation_values(protocol)
    if ablation:
        sec.tables["score_ablation"] = tables.ablation_table(protocol, ablation, labeled, folder)

    export_cartography(sec, out, cartography_max_classes)
    return sec


def imbalanced(protocol: Protocol) -> bool:
    ratio = protocol.config.get("data.imbalance_ratio")
    return isinstance(ratio, (int, float)) and ratio > 1


TRAINING_COLUMNS = {"val_accuracy": "validation accuracy %",
                    "loss": "loss change before LR drop, %",
                    "kl": "module KL change before LR drop, %"}


def measured_costs(protocol: Protocol) -> dict[tuple[str, str], dict[str, list]]:
    """(series label, path) -> per-cycle seconds, ratio to training and measurements over the
    seeds that measured that way: the candidates streamed from the shards at every measurement
    cost far more than read from the pool kept decoded (training/measure.py), so the two are never
    averaged together. Cycles recorded before the path was (no `path` key) streamed."""
    out = {}
    for s in protocol.series:
        paths = {}
        for run in s.runs:
            recorded = [c["measured_td"] for c in run.cycles if isinstance(c.get("measured_td"), dict)]
            if recorded:
                paths.setdefault(recorded[0].get("path", "streamed"), []).append(run)
        for path, runs in paths.items():
            view = Series(s.strategy, s.objective, runs)
            out[(s.label, path)] = {
                "seconds": stats.per_cycle_values(view, "measured_td", "seconds"),
                "ratio": stats.per_cycle_values(view, "measured_td", "ratio_to_training"),
                "measurements": stats.per_cycle_values(view, "measured_td", "measurements"),
                "seeds": view.seeds}
    return out


def training_columns(protocol: Protocol) -> dict[str, dict[str, list[stats.Spread]]]:
    """Columns of the training table that some run has: accuracy on the validation hold-out
    (al.val_size) and how flat the loss and the module's KL were before the first LR drop."""
    columns: dict[str, dict[str, list[stats.Spread]]] = {}
    for key, name in TRAINING_COLUMNS.items():
        per = {}
        for s in protocol.series:
            if key == "val_accuracy":
                values = [stats.Spread(100 * v.mean, 100 * v.std, v.n)
                          for v in stats.per_cycle_values(s, key)]
            else:
                values = stats.convergence(s, key)
            if any(v.n for v in values):
                per[s.label] = values
        if per:
            columns[name] = per
    return columns


def ablation_entries(raw: dict) -> dict[str, dict]:
    """metrics.json's score_ablation as {score: {name: value}}. Runs of the first version nested
    the scores under "scores", with the classifier's error rate on all candidates beside them."""
    if "scores" not in raw:
        return raw
    entries = dict(raw["scores"])
    if "candidate_error_rate" in raw:
        entries["all_candidates"] = {"error_rate": raw["candidate_error_rate"]}
    return entries


def ablation_values(protocol: Protocol) -> dict[tuple[str, int, str], dict[str, stats.Spread]]:
    """(series, cycle, score) -> {scalar key: mean/std/n over seeds} from metrics score_ablation."""
    gathered: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    for s in protocol.series:
        for run in s.runs:
            for k, m in enumerate(run.cycles):
                for score, values in ablation_entries(m.get("score_ablation") or {}).items():
                    per = gathered.setdefault((s.label, k, str(score)), {})
                    for key, v in stats.flatten_scalars(values).items():
                        per.setdefault(key, []).append(v)
    return {key: {c: stats.Spread.of(v) for c, v in per.items()}
            for key, per in sorted(gathered.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2]))}


def export_cartography(sec: Section, out: Path, max_classes: int) -> None:
    if max_classes <= 0:
        sec.skipped["cartography"] = "export disabled (--cartography-max-classes 0)"
        return
    reasons: list[str] = []
    for s in sec.protocol.series:
        for run in s.runs:
            for k in range(len(run.cycles)):
                target = (out / "cartography" / sec.protocol.slug / slug(s.label)
                          / f"seed_{run.seed}" / f"cycle_{k:04d}")
                try:
                    export_cycle(run.cycle_dir(k), target, max_classes)
                    sec.exports.append(target)
                except ExportRefused as e:
                    reasons.append(str(e))
    if reasons:
        # one reason per kind is enough to act on; the count says how many cycles it hit
        kinds: dict[str, int] = {}
        for r in reasons:
            kind = r.split(": ", 1)[1] if ": " in r else r
            kinds[kind] = kinds.get(kind, 0) + 1
        sec.skipped["cartography"] = "; ".join(f"{n} cycle(s): {kind}" for kind, n in kinds.items())


def _rel(path: Path, out: Path) -> str:
    return os.path.relpath(path, out)


def protocol_summary(protocol: Protocol) -> str:
    keys = [f"`{k}={protocol.config[k]}`" for k in PROTOCOL_KEYS if k in protocol.config]
    series = ", ".join(f"{s.label} (seeds {', '.join(map(str, s.seeds))})" for s in protocol.series)
    return f"Protocol: {' '.join(keys)}.\n\nSeries: {series}.\n"


FIGURE_TITLES = [("accuracy", "Accuracy vs labels"),
                 ("relative", "Relative improvement over Random"),
                 ("paired_difference", "Paired difference vs Random, with 95% intervals"),
                 ("queried_classes", "Classes of the queried samples"),
                 ("seconds", "Seconds per phase"),
                 ("module_kl", "Module analysis")]


def section_markdown(sec: Section, out: Path, several: bool) -> str:
    p = sec.protocol
    lines = [f"## {p.slug}" if several else f"## {p.dataset}", "", protocol_summary(p)]

    def figure(name: str, title: str) -> None:
        lines.append(f"### {title}\n")
        if name in sec.figures:
            lines.append(f"![{title}]({_rel(sec.figures[name], out)})\n")
        if name in sec.skipped:
            lines.append(f"_Skipped: {sec.skipped[name]}._\n")

    figure(*FIGURE_TITLES[0])
    figure(*FIGURE_TITLES[1])
    if "paired_difference" in sec.figures:
        figure(*FIGURE_TITLES[2])
    lines.append("### Per cycle\n")
    lines.append(sec.tables["accuracy"])
    if max(len(s.runs) for s in p.series) == 1:
        lines.append("_One seed per strategy: no spread to compare a gap with; run more seeds "
                     "(`--seeds 0,1,2`) to see whether a gap is larger than the noise._\n")
    lines.append(f"Std over seeds (n − 1); Δ and % paired by seed with Random; the 95% interval "
                 f"of Δ is Student's t with n − 1 degrees of freedom, **bold** where it excludes "
                 f"zero. "
                 f"CSV: [{_rel(sec.folder / 'accuracy.csv', out)}]({_rel(sec.folder / 'accuracy.csv', out)})\n")
    if "same_training" in sec.tables or "same_training" in sec.skipped:
        lines.append("### The TiDAL paper's ablation: module vs classifier under the same training\n")
        lines.append("Each TD-module score (TiDAL-H, TiDAL-M) against the classifier's own entropy "
                     "or margin, both trained with TiDAL's objective (`train.objective=tidal`), so "
                     "only the score differs; the difference is paired by seed. CSV: "
                     "same_training.csv.\n")
        if "same_training" in sec.tables:
            lines.append(sec.tables["same_training"])
        else:
            lines.append(f"_Skipped: {sec.skipped['same_training']}._\n")
    if "td_family" in sec.tables:
        lines.append("### TiDAL against the rest of the training-dynamics family\n")
        lines.append("Each TiDAL strategy (the module's predicted TD) against each other "
                     "training-dynamics strategy in the protocol, each under its own objective: "
                     "measured TD (`td_measured_entropy`, `td_measured_margin`, "
                     "`label_dispersion`), dynamicAL (`dynamical`) and TOD (`tod`). The "
                     "difference is paired by seed, 95% t-interval in bold where it excludes "
                     "zero. CSV: td_family.csv.\n")
        lines.append(sec.tables["td_family"])
    if "class_accuracy" in sec.tables or "class_accuracy" in sec.skipped:
        lines.append("### Imbalanced pool: balanced and minority-class accuracy\n")
        lines.append("Balanced accuracy is the mean of the per-class test accuracies; the "
                     "minority classes are the tail half of the classes (the pool's rarest), "
                     "their accuracy pooled over their test samples. Δ paired by seed with "
                     "Random, 95% t-interval in bold where it excludes zero. CSV: "
                     "class_accuracy.csv.\n")
        if "paired_difference_balanced" in sec.figures:
            lines.append(f"![Balanced accuracy, paired difference vs Random]"
                         f"({_rel(sec.figures['paired_difference_balanced'], out)})\n")
        if "class_accuracy" in sec.tables:
            lines.append(sec.tables["class_accuracy"])
        else:
            lines.append(f"_Skipped: {sec.skipped['class_accuracy']}._\n")
    for name, title in FIGURE_TITLES[3:]:
        figure(name, title)
        if name in sec.tables:
            lines.append(sec.tables[name])
    if "measured_td" in sec.tables:
        lines.append("### Cost of measuring the candidates' training dynamics\n")
        lines.append("Seconds per cycle spent evaluating the candidate subset during training "
                     "(`al.td_measure_every`), and their ratio to the cycle's training proper "
                     "(which excludes them); TiDAL's module predicts the same quantity at no such "
                     "cost. Candidates `streamed` from the shards at every measurement or "
                     "read from the pool kept `decoded` (README, \"Strategies\") are kept apart. "
                     "CSV: measured_td.csv.\n")
        lines.append(sec.tables["measured_td"])
    lines.append("### Data maps\n")
    for name, path in sec.figures.items():
        if name.startswith("datamap_"):
            lines.append(f"![{name}]({_rel(path, out)})\n")
    if "datamaps" in sec.skipped:
        lines.append(f"_Skipped: {sec.skipped['datamaps']}._\n")
    if "training" in sec.tables:
        lines.append("### Training: validation accuracy and convergence\n")
        lines.append("Validation accuracy is measured on the pool hold-out (`al.val_size`), never "
                     "labeled nor used for selection: make protocol choices on it, not on the test "
                     "split. A change column compares the mean of the last fifth of the epochs "
                     "before the first LR drop with the fifth before it: near 0 the curve had "
                     "flattened; clearly negative, it was still falling when the LR dropped. "
                     "CSV: training.csv.\n")
        lines.append(sec.tables["training"])
    if "score_ablation" in sec.tables:
        lines.append("### Score ablation\n")
        lines.append("Every cheap score the runs logged for every candidate (`al.log_scores`), "
                     "whatever the run selected with: `overlap_with_queried` is the share of the "
                     "score's top-k that the run actually queried, `error_rate` the classifier's "
                     "error rate on that top-k (`all_candidates`: on every candidate). Under one "
                     "training, this compares the module's scores (tidal_*) with the classifier's "
                     "own (the TiDAL paper's ablation).\n")
        lines.append(sec.tables["score_ablation"])
    lines.append("### Dataset Cartography export\n")
    if sec.exports:
        lines.append(f"{len(sec.exports)} cycle(s) under "
                     f"`{_rel(out / 'cartography' / p.slug, out)}/<strategy>/seed_<s>/cycle_<k>/"
                     f"training_dynamics/` (log-probabilities as `logits_epoch_E`; see "
                     f"docs/experiments.md).\n")
    if "cartography" in sec.skipped:
        lines.append(f"_Not exported: {sec.skipped['cartography']}._\n")
    return "\n".join(lines)


def write_document(out: Path, paths: list, runs: list[Run], sections: list[Section],
                   notes: list[str]) -> dict:
    several = len(sections) > 1
    used = sum(len(s.runs) for sec in sections for s in sec.protocol.series)
    head = ["# Active-learning report", "",
            f"{used} run(s) from {', '.join(f'`{p}`' for p in paths)}.", ""]
    if notes:
        head += ["**Notes**", ""] + [f"- {n}" for n in notes] + [""]
    body = [section_markdown(sec, out, several) for sec in sections]
    atomic_write_text(out / "report.md", "\n".join(head) + "\n" + "\n".join(body))
    report = {
        "notes": notes,
        "protocols": [{
            "slug": sec.protocol.slug, "dataset": sec.protocol.dataset,
            "series": [{"label": s.label, "strategy": s.strategy, "objective": s.objective,
                        "seeds": s.seeds, "runs": [str(r.path) for r in s.runs]}
                       for s in sec.protocol.series],
            "figures": {k: _rel(v, out) for k, v in sec.figures.items()},
            "skipped": sec.skipped,
            "cartography": [_rel(p, out) for p in sec.exports],
        } for sec in sections],
    }
    atomic_write_json(out / "report.json", report)
    return report
