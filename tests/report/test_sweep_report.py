"""From a sweep to a report: 2 strategies x 2 seeds of a small synthetic protocol, then
`tidal-dist report` on the sweep folder produces every plot and table."""

import json

import pytest

from tests.mp import run_module, tail
from tests.report.rundirs import check_png
from tests.sweeps import sweep, write_protocol
from tidal_dist.report.tables import read_csv


@pytest.fixture(scope="module")
def swept(tmp_path_factory, synthetic_dataset):
    tmp = tmp_path_factory.mktemp("e2e")
    protocol = write_protocol(tmp / "tiny.yaml", synthetic_dataset)
    out = tmp / "sw"
    proc = sweep(protocol, out, "random,tidal_entropy", "0,1")
    assert proc.returncode == 0, tail(proc)
    proc = run_module(["report", str(out), "--out", str(tmp / "report")])
    assert proc.returncode == 0, tail(proc)
    return out, tmp / "report", proc


def test_every_plot_and_table(swept):
    out, report, proc = swept
    folder = report / "shards"  # the protocol is named after data.root
    assert f"comparison plot (shards): {folder / 'accuracy.png'}" in proc.stdout
    for name in ("accuracy", "relative_to_random", "queried_classes", "seconds"):
        check_png(folder / f"{name}.png")
    for table in ("accuracy.csv", "accuracy.md", "seconds.csv", "queried_classes.csv"):
        assert (folder / table).is_file()
    rows = read_csv(folder / "accuracy.csv")
    assert [(r["cycle"], r["strategy"], r["n"]) for r in rows] == [
        ("0", "random", "2"), ("0", "tidal_entropy", "2"), ("1", "random", "2"),
        ("1", "tidal_entropy", "2")]
    tidal = [r for r in rows if r["strategy"] == "tidal_entropy"]
    assert all(r["diff_n"] == "2" and r["rel_mean"] != "" for r in tidal)

    # what depends on records the runs may or may not carry: drawn when present, else named
    summary = json.loads((report / "report.json").read_text())["protocols"][0]
    text = (report / "report.md").read_text()
    cycle0 = out / "random/seed_0/cycles/cycle_0000"
    has_module = "module_analysis" in json.loads((cycle0 / "metrics.json").read_text())
    has_maps = (cycle0 / "td/stats.npy").is_file() or (cycle0 / "td/epochs").is_dir()
    if has_module:
        check_png(folder / "module_kl.png")
    else:
        assert "no module_analysis" in summary["skipped"]["module_kl"] and "module_analysis" in text
    if has_maps:
        for label in ("random", "tidal_entropy"):
            check_png(folder / f"datamap_{label}_seed0.png")
    else:
        assert "no td/stats.npy or td/epochs/" in summary["skipped"]["datamaps"]
    assert "cartography" in summary["skipped"] or summary["cartography"]
    for png in folder.glob("*.png"):
        assert str(png.relative_to(report)) in text


def test_seeds_draw_their_own_subsets(swept):
    out, _, _ = swept
    for seed in (0, 1):
        m = json.loads((out / f"random/seed_{seed}/cycles/cycle_0000/metrics.json").read_text())
        assert m["subset_seed"] == m["run_seed"] == seed
