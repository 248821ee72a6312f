"""The cold-start comparison's own table (launch/typiclust_cold_start.sh): for two sweeps that
differ only in al.initial_strategy, each initial set's class coverage and histogram, test accuracy
per cycle (mean +- std over seeds) and the difference between the arms paired by seed, plus the
SimCLR pretrain's loss per epoch. Reads the runs' committed cycles/cycle_K/metrics.json only.

    python launch/typiclust_initial_sets.py BASELINE_SWEEP OTHER_SWEEP [--weights W] --out FILE.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def runs(sweep: Path) -> dict[int, Path]:
    """seed -> run dir of the sweep's (single) strategy."""
    found = {}
    for run in sorted(sweep.glob("*/seed_*")):
        if (run / "cycles").is_dir():
            found[int(run.name.removeprefix("seed_"))] = run
    return found


def cycles(run: Path) -> list[dict]:
    return [json.loads((c / "metrics.json").read_text())
            for c in sorted((run / "cycles").glob("cycle_*"))]


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def arm_name(sweep: Path) -> str:
    return sweep.name.removesuffix("_initial")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    arms = {arm_name(s): {seed: cycles(r) for seed, r in runs(s).items()}
            for s in (args.baseline, args.other)}
    base, other = arm_name(args.baseline), arm_name(args.other)
    lines = ["# Initial sets and accuracy: " + f"{other} vs {base}", ""]

    if args.weights is not None:
        record = args.weights.with_name(args.weights.name.removesuffix(".safetensors") +
                                        ".pretrain.json")
        if record.exists():
            rec = json.loads(record.read_text())
            losses = ", ".join(f"{x:.3f}" for x in rec["epoch_losses"])
            lines += [f"SimCLR pretrain of `{rec['backbone']}` on {rec['images']:,} pool images, "
                      f"{rec['settings']['epochs']} epochs of {rec['steps_per_epoch']} steps "
                      f"(batch {rec['settings']['batch_size']}, temperature "
                      f"{rec['settings']['temperature']}), {rec['train_seconds']:.0f} s: NT-Xent "
                      f"per epoch {losses} (chance: ln(2N-1) = "
                      f"{np.log(2 * rec['settings']['batch_size'] - 1):.3f})", ""]

    lines += ["## Initial sets (cycle 0's labeled set)", "",
              "| initial strategy | seed | classes covered | fewest-most per class | std per class "
              "| class histogram (classes 0-9) |",
              "|---|---|---|---|---|---|"]
    coverage, spread = {}, {}
    for arm, seeds in arms.items():
        for seed, cyc in sorted(seeds.items()):
            hist = cyc[0]["labeled_histogram"]
            covered = sum(1 for h in hist if h > 0)
            coverage.setdefault(arm, []).append(covered)
            spread.setdefault(arm, []).append(float(np.std(hist)))
            lines.append(f"| {arm} | {seed} | {covered} / {len(hist)} | {min(hist)}-{max(hist)} "
                         f"| {np.std(hist):.2f} | {hist} |")
    lines += ["", "Mean over seeds: " + "; ".join(
        f"{arm}: {np.mean(coverage[arm]):.1f} classes covered, std per class "
        f"{np.mean(spread[arm]):.2f}" for arm in coverage), ""]

    seeds = sorted(set(arms[base]) & set(arms[other]))
    n_cycles = min(len(arms[a][s]) for a in (base, other) for s in seeds) if seeds else 0
    lines += ["## Test accuracy (%), mean ± std over seeds "
              f"{', '.join(map(str, seeds))}; difference paired by seed", "",
              f"| cycle | labels | {base} | {other} | {other} − {base} | per seed |",
              "|---|---|---|---|---|---|"]
    for k in range(n_cycles):
        a = [arms[base][s][k]["accuracy"] for s in seeds]
        b = [arms[other][s][k]["accuracy"] for s in seeds]
        diff = [y - x for x, y in zip(a, b)]
        per_seed = ", ".join(f"{d * 100:+.2f}" for d in diff)
        lines.append(f"| {k} | {arms[base][seeds[0]][k]['labeled']} | {mean_std(a)} | "
                     f"{mean_std(b)} | {mean_std(diff)} | {per_seed} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
