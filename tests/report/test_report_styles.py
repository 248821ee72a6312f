"""The report's statistics a reader relies on and the figures that must tell a dozen series apart:
the 95% t-interval of a paired difference against hand computation, the tables that mark the
intervals excluding zero, balanced and minority-class accuracy on an imbalanced protocol, and a
13-series report whose PNGs give every series its own colour and marker."""

import math

import numpy as np
import pytest
from PIL import Image
from pytest import approx

from tests.report.rundirs import check_png, make_run
from tidal_dist.report import report_main
from tidal_dist.report.collect import Series
from tidal_dist.report.plots import series_styles
from tidal_dist.report.stats import Spread, t_quantile
from tidal_dist.report.tables import read_csv

STRATEGIES = ["random", "entropy", "margin", "badge", "bald", "coreset", "lloss", "tidal_entropy",
              "tidal_margin", "td_measured_entropy", "td_measured_margin", "label_dispersion",
              "dynamical"]
SEEDS = (0, 1, 2)
OFFSETS = (0.0, 0.01, 0.03)  # random's accuracy per seed, over its cycle base
# each strategy's gain over random per seed, as accuracy fractions: ties paired differences to
# numbers the test can compute by hand
# (Random's own are zero)
GAINS = {s: (0.002 * i, 0.002 * i + 0.006 * (i % 2), 0.0025 * i) for i, s in enumerate(STRATEGIES)}


def test_t_quantile_against_closed_forms_and_tables():
    # dof 1: Cauchy, t = tan(0.975 pi - pi/2) = tan(0.95 pi / 2)
    assert t_quantile(0.95, 1) == approx(math.tan(0.95 * math.pi / 2), rel=1e-9)
    # dof 2: P(|T| < t) = t / sqrt(2 + t^2)  =>  t = sqrt(2 a^2 / (1 - a^2))
    assert t_quantile(0.95, 2) == approx(math.sqrt(2 * 0.95**2 / (1 - 0.95**2)), rel=1e-9)
    # printed tables, t_{0.975, dof}
    for dof, table in ((3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.95, dof) == approx(table, abs=5e-4)


def test_interval_of_a_paired_difference_by_hand():
    d = [1.0, 2.0, 4.0]
    s = Spread.of(d)
    mean, sd = 7 / 3, math.sqrt(7 / 3)  # sum of squared deviations 42/9 over n - 1 = 2
    half = math.sqrt(2 * 0.95**2 / (1 - 0.95**2)) * sd / math.sqrt(3)
    assert (s.mean, s.std) == (approx(mean), approx(sd))
    assert s.interval == (approx(mean - half), approx(mean + half))
    assert s.excludes_zero is False  # 2.33 - 3.79 < 0
    assert Spread.of([2.0, 2.1, 1.9]).excludes_zero is True
    assert Spread.of([-2.0, -2.1, -1.9]).excludes_zero is True
    assert Spread.of([1.0]).excludes_zero is False and math.isnan(Spread.of([1.0]).half_width)


def per_class(seed: int, si: int) -> tuple[list[int], list[int]]:
    """Per-class (correct, seen) over 4 classes; the tail classes 2, 3 are the minority."""
    seen = [100, 100, 50, 10]
    correct = [90, 80 + seed, 20 + si, 2 + (si + seed) % 5]
    return correct, seen


@pytest.fixture(scope="module")
def thirteen(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    for si, strategy in enumerate(STRATEGIES):
        for seed, off in zip(SEEDS, OFFSETS):
            accs = [0.5 + 0.1 * k + off + GAINS[strategy][seed] for k in range(3)]
            correct, seen = per_class(seed, si)
            extra = {"test_per_class_correct": correct, "test_per_class_seen": seen}
            if strategy.startswith("td_measured") or strategy == "label_dispersion":
                extra["measured_td"] = {"seconds": 4.0 + seed, "ratio_to_training": 0.4 + 0.1 * seed,
                                        "measurements": 20, "every": 4}
                if strategy == "td_measured_margin":  # seeds 1-2 decoded, seed 0 predates the key
                    if seed:
                        extra["measured_td"]["path"] = "decoded"
            make_run(root / "runs", strategy, seed, accs, config={"data.imbalance_ratio": 10.0},
                     classes=4, queried_histogram=[20, 15, 10, 5], extra=extra)
    assert report_main([str(root / "runs")], root / "out", cartography_max_classes=0) == 0
    return root / "out"


def test_accuracy_table_interval_columns_and_markdown_marks(thirteen):
    rows = {(r["strategy"], int(r["cycle"])): r for r in read_csv(thirteen / "toy" / "accuracy.csv")}
    for strategy in ("entropy", "dynamical"):
        d = [100 * g for g in GAINS[strategy]]
        mean = sum(d) / 3
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
        half = t_quantile(0.95, 2) * sd / math.sqrt(3)
        row = rows[(strategy, 1)]
        assert float(row["diff_mean"]) == approx(mean)
        assert float(row["diff_ci_low"]) == approx(mean - half)
        assert float(row["diff_ci_high"]) == approx(mean + half)
        assert row["diff_ci_excludes_zero"] == str(int(mean - half > 0))
    # entropy: 0.2, 0.8, 0.25 pp -> the interval spans 0; dynamical: 2.4, 2.4, 3.0 pp -> above 0
    assert rows[("entropy", 1)]["diff_ci_excludes_zero"] == "0"
    assert rows[("dynamical", 1)]["diff_ci_excludes_zero"] == "1"
    text = (thirteen / "report.md").read_text()
    assert "95% CI of Δ" in text
    lo, hi = float(rows[("dynamical", 1)]["diff_ci_low"]), float(rows[("dynamical", 1)]["diff_ci_high"])
    assert f"**[{lo:+.2f}, {hi:+.2f}]**" in text
    lo, hi = float(rows[("entropy", 1)]["diff_ci_low"]), float(rows[("entropy", 1)]["diff_ci_high"])
    assert f"[{lo:+.2f}, {hi:+.2f}]" in text and f"**[{lo:+.2f}, {hi:+.2f}]**" not in text


def test_balanced_and_minority_accuracy_on_an_imbalanced_protocol(thirteen):
    rows = {(r["strategy"], int(r["cycle"])): r
            for r in read_csv(thirteen / "toy" / "class_accuracy.csv")}
    for si, strategy in enumerate(STRATEGIES):
        balanced, minority = [], []
        for seed in SEEDS:
            c, n = per_class(seed, si)
            balanced.append(100 * sum(ci / ni for ci, ni in zip(c, n)) / 4)
            minority.append(100 * (c[2] + c[3]) / (n[2] + n[3]))
        row = rows[(strategy, 2)]
        assert float(row["balanced_acc_mean"]) == approx(np.mean(balanced))
        assert float(row["minority_acc_mean"]) == approx(np.mean(minority))
        if strategy != "random":
            base = [100 * sum(ci / ni for ci, ni in zip(*per_class(seed, 0))) / 4 for seed in SEEDS]
            assert float(row["balanced_diff_mean"]) == approx(np.mean(balanced) - np.mean(base))
    text = (thirteen / "report.md").read_text()
    assert "### Imbalanced pool: balanced and minority-class accuracy" in text
    check_png(thirteen / "toy" / "paired_difference_balanced.png")


def test_every_series_has_its_own_colour_and_marker():
    series = [Series(s, "auto") for s in STRATEGIES] + [Series("entropy", "tidal")]
    for n in (13, 14, 40):
        labels = [s.label for s in series] + [f"extra_{i}" for i in range(n - len(series))]
        more = series + [Series(f"extra_{i}", "auto") for i in range(n - len(series))]
        styles = series_styles(more[:n])
        pairs = {(styles[lab].color, styles[lab].marker) for lab in labels[:n]}
        assert len(pairs) == n
    styles = series_styles(series)
    assert styles["random"].color == "#000000"
    thick = {lab for lab, st in styles.items() if st.linewidth > 2}
    assert thick == {"tidal_entropy", "tidal_margin"}


def colour_pixels(path, hex_color: str) -> int:
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image - rgb).max(axis=2) <= 3).sum())


def test_the_13_series_png_draws_every_style(thirteen):
    series = [Series(s, "auto") for s in STRATEGIES]
    styles = series_styles(series)
    assert len({(st.color, st.marker) for st in styles.values()}) == 13
    for name in ("accuracy.png", "paired_difference.png"):
        png = thirteen / "toy" / name
        check_png(png)
        width = Image.open(png).size[0]
        for label, st in styles.items():
            if name == "paired_difference.png" and label == "random":
                continue  # random has no difference with itself
            assert colour_pixels(png, st.color) > 30, (name, label, st.color)
        if name == "accuracy.png":
            assert width > 900  # the legend sits beside the axes, widening the figure
    assert "paired_difference.png" in (thirteen / "report.md").read_text()


def test_the_cost_of_measuring_is_tabled(thirteen):
    rows = read_csv(thirteen / "toy" / "measured_td.csv")
    assert {r["strategy"] for r in rows} == {"td_measured_entropy", "td_measured_margin",
                                             "label_dispersion"}
    for r in rows:
        if r["strategy"] != "td_measured_margin":  # seconds 4, 5, 6 and ratios 0.4, 0.5, 0.6
            assert r["path"] == "streamed"
            assert float(r["seconds_mean"]) == approx(5.0) and float(r["ratio_mean"]) == approx(0.5)
    # the two ways of measuring are never averaged together: seed 0 streamed, seeds 1-2 decoded
    margin = {r["path"]: r for r in rows if r["strategy"] == "td_measured_margin" and r["cycle"] == "0"}
    assert float(margin["streamed"]["seconds_mean"]) == approx(4.0) and margin["streamed"]["n"] == "1"
    assert float(margin["decoded"]["seconds_mean"]) == approx(5.5) and margin["decoded"]["n"] == "2"
    text = (thirteen / "report.md").read_text()
    assert "### Cost of measuring the candidates' training dynamics" in text
    assert "| 0 | 100 | label_dispersion | streamed (0, 1, 2) | 5.0 ± 1.0 | 0.50 ± 0.10 | 20 ± 0 |" in text
    assert "| 0 | 100 | td_measured_margin | decoded (1, 2) | 5.5 ± 0.7 | 0.55 ± 0.07 | 20 ± 0 |" in text
