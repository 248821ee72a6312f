"""Which runs are averaged: only runs whose configs differ in the seed, the run folder, the
strategy, the objective setting and the mutable keys; other differences make separate protocols,
and the report names the keys that differ."""

import json

from tests.report.rundirs import make_run
from tidal_dist.report import report_main
from tidal_dist.report.collect import collect, group
from tidal_dist.report.tables import read_csv


def test_runs_with_different_protocols_are_never_averaged(tmp_path, capsys):
    make_run(tmp_path / "a", "tidal_entropy", 0, [0.50, 0.60], config={"train.epochs": 10})
    make_run(tmp_path / "b", "tidal_entropy", 1, [0.70, 0.80], config={"train.epochs": 20,
                                                                        "al.budget": 40})
    assert report_main([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out") == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [p["slug"] for p in summary["protocols"]] == ["toy-1", "toy-2"]
    for p in summary["protocols"]:
        assert [s["seeds"] for s in p["series"]] == [[0]] or [s["seeds"] for s in p["series"]] == [[1]]
    (note,) = [n for n in summary["notes"] if "not averaged" in n]
    assert "train.epochs (10 vs 20)" in note and "al.budget (50 vs 40)" in note
    assert "train.epochs" in printed and "train.epochs" in (tmp_path / "out" / "report.md").read_text()
    for slug, acc in (("toy-1", 50.0), ("toy-2", 70.0)):
        (row,) = [r for r in read_csv(tmp_path / "out" / slug / "accuracy.csv") if r["cycle"] == "0"]
        assert row["n"] == "1" and float(row["acc_mean"]) == acc


def test_seed_folder_strategy_and_mutable_keys_do_not_split_a_protocol(tmp_path):
    make_run(tmp_path, "random", 0, [0.5], config={"data.num_workers": 4, "al.cycles": 3})
    make_run(tmp_path, "random", 1, [0.6], config={"data.num_workers": 1, "al.cycles": 5,
                                                   "run.log_every": 7})
    make_run(tmp_path, "tidal_entropy", 0, [0.55], config={"train.objective": "auto"})
    runs, _ = collect([tmp_path])
    protocols, notes = group(runs)
    assert len(protocols) == 1 and notes == []
    assert [(s.label, s.seeds) for s in protocols[0].series] == [("random", [0, 1]),
                                                                 ("tidal_entropy", [0])]


def test_an_explicit_objective_is_its_own_series(tmp_path):
    """The paper's ablation: entropy scored on the classifier but trained with the TiDAL loss
    sits next to entropy with its own objective, never averaged with it."""
    make_run(tmp_path / "x", "entropy", 0, [0.5])
    make_run(tmp_path / "y", "entropy", 0, [0.6], config={"train.objective": "tidal"})
    runs, _ = collect([tmp_path])
    protocols, _ = group(runs)
    assert len(protocols) == 1
    assert sorted(s.label for s in protocols[0].series) == ["entropy", "entropy (tidal)"]


def test_a_seed_given_twice_counts_once(tmp_path):
    make_run(tmp_path / "a", "random", 0, [0.5])
    make_run(tmp_path / "b", "random", 0, [0.9])
    runs, _ = collect([tmp_path / "a", tmp_path / "b"])
    protocols, notes = group(runs)
    assert protocols[0].series[0].seeds == [0]
    assert any("a seed counts once" in n for n in notes)


def test_a_sweep_folder_lists_its_runs_and_unstarted_ones(tmp_path):
    make_run(tmp_path / "sw", "random", 0, [0.5])
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({"version": 1, "runs": [
        {"name": "random/seed_0", "dir": "random/seed_0"},
        {"name": "random/seed_1", "dir": "random/seed_1"}]}))
    runs, notes = collect([tmp_path / "sw"])
    assert [r.seed for r in runs] == [0]
    assert any("not started yet: random/seed_1" in n for n in notes)
