"""The per-cycle table over hand-made runs with known numbers: mean, std over seeds, the paired
difference with Random and the relative improvement, exactly as defined in report/stats.py."""

import statistics

import pytest

from tests.report.rundirs import make_run
from tidal_dist.report import report_main
from tidal_dist.report.tables import read_csv

RANDOM = {0: [0.50, 0.60], 1: [0.52, 0.61], 2: [0.54, 0.65]}
TIDAL = {0: [0.50, 0.66], 1: [0.53, 0.64], 2: [0.55, 0.71], 3: [0.56, 0.70]}  # seed 3: no Random twin


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tables")
    for seed, acc in RANDOM.items():
        make_run(tmp_path / "runs", "random", seed, acc)
    for seed, acc in TIDAL.items():
        make_run(tmp_path / "runs", "tidal_entropy", seed, acc)
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs")], out) == 0
    rows = read_csv(out / "toy" / "accuracy.csv")
    return out, {(int(r["cycle"]), r["strategy"]): r for r in rows}


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("cycle", [0, 1])
def test_mean_and_std_over_seeds(report, cycle):
    _, rows = report
    for strategy, runs in (("random", RANDOM), ("tidal_entropy", TIDAL)):
        acc = [100 * a[cycle] for a in runs.values()]
        row = rows[(cycle, strategy)]
        assert int(row["n"]) == len(acc)
        assert float(row["acc_mean"]) == approx(statistics.mean(acc))
        assert float(row["acc_std"]) == approx(statistics.stdev(acc))  # sample std (n - 1)
        assert int(row["labeled"]) == 100 + 50 * cycle


def test_paired_difference_and_relative_improvement(report):
    _, rows = report
    # cycle 1, seeds 0..2 paired; seed 3 has no Random run and must not count
    diffs = [66 - 60, 64 - 61, 71 - 65]
    rel = [(66 - 60) / 60 * 100, (64 - 61) / 61 * 100, (71 - 65) / 65 * 100]
    row = rows[(1, "tidal_entropy")]
    assert int(row["diff_n"]) == 3 and int(row["rel_n"]) == 3
    assert float(row["diff_mean"]) == approx(5.0)
    assert float(row["diff_std"]) == approx(3 ** 0.5)  # deviations 1, -2, 1
    assert float(row["diff_mean"]) == approx(statistics.mean(diffs))
    assert float(row["rel_mean"]) == approx(statistics.mean(rel))
    assert float(row["rel_std"]) == approx(statistics.stdev(rel))
    # cycle 0: differences 0, 1, 1 pp
    row0 = rows[(0, "tidal_entropy")]
    assert float(row0["diff_mean"]) == approx(2 / 3)
    assert float(row0["rel_mean"]) == approx(statistics.mean([0.0, 1 / 52 * 100, 1 / 54 * 100]))


def test_random_row_has_no_comparison_with_itself(report):
    _, rows = report
    row = rows[(1, "random")]
    assert row["diff_mean"] == row["diff_n"] == row["rel_mean"] == ""


def test_markdown_table_shows_the_same_numbers(report):
    out, _ = report
    text = (out / "toy" / "accuracy.md").read_text()
    mean = statistics.mean([66, 64, 71, 70])
    std = statistics.stdev([66, 64, 71, 70])
    assert f"| 1 | 150 | tidal_entropy | 4 | {mean:.2f} ± {std:.2f} | 5.00 ± 1.73 (n=3) |" in text
    assert f"{mean:.2f} ± {std:.2f}" in (out / "report.md").read_text()


def test_single_seed_has_no_std(tmp_path):
    make_run(tmp_path / "runs", "random", 0, [0.5])
    make_run(tmp_path / "runs", "margin", 0, [0.6])
    report_main([str(tmp_path / "runs")], tmp_path / "out")
    row = {r["strategy"]: r for r in read_csv(tmp_path / "out" / "toy" / "accuracy.csv")}["margin"]
    assert row["acc_std"] == "" and row["diff_std"] == ""
    assert float(row["diff_mean"]) == approx(10.0) and int(row["diff_n"]) == 1


def test_score_ablation_of_either_metrics_layout():
    from tidal_dist.report.document import ablation_entries

    flat = {"all_candidates": {"error_rate": 0.2}, "entropy": {"overlap_with_queried": 1.0}}
    assert ablation_entries(flat) == flat
    nested = {"k": 500, "candidate_error_rate": 0.2, "scores": {"entropy": {"overlap_with_queried": 1.0}}}
    assert ablation_entries(nested) == flat


def test_training_table_gives_validation_accuracy_and_the_loss_trend_before_the_lr_drop(tmp_path):
    """20 epochs, LR drop at 0.5 -> epoch 10: the trend compares epochs 6-7 with 8-9 (fifths of
    the 10 epochs before the drop); what happens after the drop does not count."""
    falling = [{"loss": 10.0 - e, "kl": 1.0} for e in range(10)] + [{"loss": 0.1, "kl": 1.0}] * 10
    flat = [{"loss": 2.0, "kl": 0.5 + 0.1 * e} for e in range(20)]
    config = {"train.epochs": 20, "train.lr_decay_at": [0.5, 0.9]}
    for seed, (curve, val) in enumerate([(falling, 0.70), (flat, 0.80)]):
        make_run(tmp_path / "runs", "random", seed, [0.5], config=config, train=curve,
                 val_accuracy=val)
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs")], out) == 0
    (row,) = read_csv(out / "toy" / "training.csv")
    falling_change = ((1.5 - 3.5) / 3.5) * 100  # mean(loss at 8, 9) vs mean(loss at 6, 7)
    assert float(row["validation accuracy %_mean"]) == approx(75.0)
    assert float(row["validation accuracy %_std"]) == approx(statistics.stdev([70.0, 80.0]))
    assert float(row["loss change before LR drop, %_mean"]) == approx(falling_change / 2)
    kl_flat = (sum(0.5 + 0.1 * e for e in (8, 9)) / sum(0.5 + 0.1 * e for e in (6, 7)) - 1) * 100
    assert float(row["module KL change before LR drop, %_mean"]) == approx(kl_flat / 2)
    assert int(row["loss change before LR drop, %_n"]) == 2
    text = (out / "report.md").read_text()
    assert "Training: validation accuracy and convergence" in text
    assert f"{falling_change / 2:.2f}" in text


def test_module_vs_classifier_under_the_same_training_is_paired_by_seed(tmp_path):
    """The paper's ablation: TiDAL-H (its own objective) against the classifier's entropy trained
    with train.objective=tidal, paired by seed; seed 3 has no classifier twin and must not count."""
    classifier = {0: [0.50, 0.63], 1: [0.53, 0.65], 2: [0.55, 0.66]}
    for seed, acc in TIDAL.items():
        make_run(tmp_path / "runs", "tidal_entropy", seed, acc)
    for seed, acc in classifier.items():
        make_run(tmp_path / "ablation", "entropy", seed, acc, config={"train.objective": "tidal"})
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs"), str(tmp_path / "ablation")], out) == 0
    rows = {int(r["cycle"]): r for r in read_csv(out / "toy" / "same_training.csv")}
    row = rows[1]
    assert (row["module_series"], row["classifier_series"]) == ("tidal_entropy", "entropy (tidal)")
    diffs = [66 - 63, 64 - 65, 71 - 66]
    assert int(row["diff_n"]) == 3
    assert float(row["diff_mean"]) == approx(statistics.mean(diffs))
    assert float(row["diff_std"]) == approx(statistics.stdev(diffs))
    assert float(row["module_acc_mean"]) == approx(statistics.mean([66, 64, 71, 70]))
    assert float(row["classifier_acc_mean"]) == approx(statistics.mean([63, 65, 66]))
    text = (out / "report.md").read_text()
    assert "module vs classifier under the same training" in text
    assert f"| 1 | 150 | tidal_entropy vs entropy (tidal) |" in text
    assert f"{statistics.mean(diffs):.2f} ± {statistics.stdev(diffs):.2f} (n=3)" in text


def test_without_a_classifier_run_under_tidal_training_the_ablation_says_what_to_add(report):
    out, _ = report
    text = (out / "report.md").read_text()
    assert "train.objective=tidal" in text and not (out / "toy" / "same_training.csv").exists()


def test_tidal_against_the_td_family_is_paired_by_seed(tmp_path):
    """TiDAL-H against each other training-dynamics strategy (measured TD, dynamicAL, TOD), paired
    by seed; a strategy outside the family (Random) and a classifier score under TiDAL's training
    are not paired; seed 3 has no twin and must not count."""
    dynamical = {0: [0.50, 0.62], 1: [0.53, 0.66], 2: [0.55, 0.68]}
    measured = {0: [0.50, 0.60], 1: [0.53, 0.67]}
    for seed, acc in TIDAL.items():
        make_run(tmp_path / "runs", "tidal_entropy", seed, acc)
    for seed, acc in RANDOM.items():
        make_run(tmp_path / "runs", "random", seed, acc)
    for seed, acc in dynamical.items():
        make_run(tmp_path / "runs", "dynamical", seed, acc)
    for seed, acc in measured.items():
        make_run(tmp_path / "runs", "td_measured_margin", seed, acc)
    make_run(tmp_path / "ablation", "entropy", 0, [0.5, 0.6], config={"train.objective": "tidal"})
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs"), str(tmp_path / "ablation")], out) == 0
    rows = {(int(r["cycle"]), r["other_series"]): r for r in read_csv(out / "toy" / "td_family.csv")}
    assert {other for _, other in rows} == {"td_measured_margin", "dynamical"}
    assert {r["tidal_series"] for r in rows.values()} == {"tidal_entropy"}
    row = rows[(1, "dynamical")]
    diffs = [66 - 62, 64 - 66, 71 - 68]
    assert int(row["diff_n"]) == 3
    assert float(row["diff_mean"]) == approx(statistics.mean(diffs))
    assert float(row["diff_std"]) == approx(statistics.stdev(diffs))
    t = 0.95 * (2 / (1 - 0.95 ** 2)) ** 0.5  # t_{0.975, 2}: P(|T| < t) = t / sqrt(2 + t^2) for 2 dof
    half = t * statistics.stdev(diffs) / 3 ** 0.5
    assert float(row["diff_ci_low"]) == approx(statistics.mean(diffs) - half)
    assert float(row["other_acc_mean"]) == approx(statistics.mean([62, 66, 68]))
    assert int(rows[(1, "td_measured_margin")]["diff_n"]) == 2
    assert float(rows[(1, "td_measured_margin")]["diff_mean"]) == approx(((66 - 60) + (64 - 67)) / 2)
    text = (out / "report.md").read_text()
    assert "TiDAL against the rest of the training-dynamics family" in text
    assert "| 1 | 150 | tidal_entropy vs dynamical |" in text


def test_without_a_td_family_run_there_is_no_td_family_table(report):
    out, _ = report
    assert not (out / "toy" / "td_family.csv").exists()
    assert "training-dynamics family" not in (out / "report.md").read_text()
