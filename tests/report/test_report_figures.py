"""Every figure the report writes decodes to a non-blank PNG and is embedded in report.md; without
a Random run the relative-improvement plot is skipped with a message instead."""

import json
import re

import numpy as np
import pytest

from tests.report.rundirs import check_png, make_run, random_probs, write_td
from tidal_dist.report import report_main

SEEDS = (0, 1)


def full_runs(root, strategies, config=None):
    """Runs carrying everything a figure needs: histograms, seconds, module analysis, TD stats,
    per-epoch records, score ablation."""
    for si, strategy in enumerate(strategies):
        for seed in SEEDS:
            accs = [0.4 + 0.01 * seed + 0.02 * si, 0.5 + 0.02 * si, 0.6 + 0.01 * seed]
            run = make_run(root, strategy, seed, accs, config=config,
                           queried_histogram=[30 - 10 * si, 10 + 5 * si, 10 + 5 * si],
                           module_analysis={"kl_td_module": 0.1 + 0.01 * seed,
                                            "kl_td_classifier": 0.3 - 0.01 * si},
                           score_ablation={"entropy": {"overlap": 0.5, "accuracy": 0.6},
                                           "tidal_entropy": {"overlap": 0.7}})
            for k in range(len(accs)):
                n = 100 + 50 * k
                ids = np.arange(n, dtype=np.int64) * 3 + 7
                labels = (ids % 3).astype(np.int64)
                write_td(run / "cycles" / f"cycle_{k:04d}", ids, labels,
                         random_probs(4, n, 3, seed=10 * seed + k))


@pytest.fixture(scope="module")
def with_random(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    full_runs(root / "runs", ["random", "tidal_entropy"])
    # the paper's ablation: the classifier's entropy under TiDAL's training
    full_runs(root / "ablation", ["entropy"], config={"train.objective": "tidal"})
    assert report_main([str(root / "runs"), str(root / "ablation")], root / "out") == 0
    return root / "out"


def test_every_png_decodes_and_is_not_blank(with_random):
    pngs = sorted(with_random.rglob("*.png"))
    names = {p.name for p in pngs}
    assert {"accuracy.png", "relative_to_random.png", "queried_classes.png", "seconds.png",
            "module_kl.png", "datamap_random_seed0.png", "datamap_tidal_entropy_seed0.png"} <= names
    for p in pngs:
        check_png(p)


def test_report_md_embeds_every_figure_and_table(with_random):
    text = (with_random / "report.md").read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(embedded) == sorted(str(p.relative_to(with_random))
                                      for p in with_random.rglob("*.png"))
    for name in ("Per cycle", "Seconds per phase", "Module analysis", "Data maps",
                 "Score ablation", "Dataset Cartography export",
                 "The TiDAL paper's ablation: module vs classifier under the same training"):
        assert f"### {name}" in text
    assert "Skipped" not in text
    for table in ("accuracy.csv", "seconds.csv", "module_kl.csv", "queried_classes.csv",
                  "score_ablation.csv", "same_training.csv"):
        assert (with_random / "toy" / table).is_file(), table
    summary = json.loads((with_random / "report.json").read_text())
    assert summary["protocols"][0]["skipped"] == {}
    assert len(summary["protocols"][0]["cartography"]) == 3 * len(SEEDS) * 3  # 3 series


def test_without_random_the_relative_plot_is_skipped_with_a_message(tmp_path, capsys):
    full_runs(tmp_path / "runs", ["tidal_entropy", "margin"])
    assert report_main([str(tmp_path / "runs")], tmp_path / "out") == 0
    out = tmp_path / "out"
    assert not (out / "toy" / "relative_to_random.png").exists()
    skipped = json.loads((out / "report.json").read_text())["protocols"][0]["skipped"]
    assert "no Random run" in skipped["relative"]
    text = (out / "report.md").read_text()
    assert "_Skipped: no Random run (random) under this protocol" in text
    assert (out / "toy" / "accuracy.png").is_file()  # the rest is still there
    check_png(out / "toy" / "accuracy.png")
