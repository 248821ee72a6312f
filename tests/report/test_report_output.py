"""`tidal-dist report` (its command line, in this process) on bad output locations and on unfinished runs: --out a
file, under a file, on a read-only or a full filesystem (a real tmpfs) is exit 2 naming the path,
with no traceback and nothing half-written; a run that has not finished is named, with how far
it got, in the report and on the console."""

import json

import pytest

from tests.cycle.test_failure_messages import no_traceback_of_ours
from tidal_dist.cli import main
from tests.report.rundirs import make_run
from tests.tmpfs import tiny_tmpfs  # noqa: F401 - a fixture
from tidal_dist.job.fsutil import atomic_write_json


def runs(root):
    for strategy in ("random", "entropy"):
        for seed in (0, 1):
            make_run(root / "runs", strategy, seed, [0.5, 0.6 + 0.01 * seed])
    return root / "runs"


class Ended:
    def __init__(self, returncode, captured):
        self.returncode, self.stdout, self.stderr = returncode, captured.out, captured.err


def tail(proc):
    return f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


@pytest.fixture
def report(capsys):
    def run(source, out):
        code = main(["report", str(source), "--out", str(out)])
        return Ended(code, capsys.readouterr())

    return run


def test_out_is_a_file_or_under_one(tmp_path, report):
    source = runs(tmp_path)
    (tmp_path / "a_file").write_text("keep me")
    proc = report(source, tmp_path / "a_file")
    assert proc.returncode == 2, tail(proc)
    assert f"--out: '{tmp_path / 'a_file'}' exists and is not a folder" in proc.stderr
    proc = report(source, tmp_path / "a_file" / "report")
    assert proc.returncode == 2, tail(proc)
    assert f"'{tmp_path / 'a_file'}' is a file" in proc.stderr
    assert no_traceback_of_ours(proc.stderr)
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_out_read_only_or_full_leaves_nothing_partial(tmp_path, report, tiny_tmpfs):
    source = runs(tmp_path)
    frozen = tiny_tmpfs("1m", read_only=True)
    proc = report(source, frozen / "report")
    assert proc.returncode == 2, tail(proc)
    assert f"'{frozen}' is on a read-only filesystem" in proc.stderr
    assert no_traceback_of_ours(proc.stderr)

    full = tiny_tmpfs("96k")  # room for some figures, not for all of them
    proc = report(source, full / "report")
    assert proc.returncode == 2, tail(proc)
    assert f"--out '{full / 'report'}'" in proc.stderr and "nothing was written" in proc.stderr
    assert no_traceback_of_ours(proc.stderr), proc.stderr
    assert list(full.iterdir()) == []  # no partial report, no staging folder


def test_a_rerun_replaces_the_report_and_keeps_other_files(tmp_path, report):
    source = runs(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert report(source, out).returncode == 0
    first = (out / "report.md").read_text()
    proc = report(source, out)
    assert proc.returncode == 0, tail(proc)
    assert (out / "report.md").read_text() == first and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "runs"]  # no staging left


def test_unfinished_runs_are_named_with_how_far_they_got(tmp_path, report):
    source = runs(tmp_path)
    waiting = make_run(source, "margin", 0, [0.55], config={"al.cycles": 2})
    atomic_write_json(waiting / "outcome.json", {
        "status": "waiting_for_labels", "exit_code": 3, "message": "cycle 0: 50 queries",
        "time": "2026-01-01T00:00:00+00:00", "unix_time": 1.0, "started": 0.0, "world_size": 1,
        "command": "run", "launcher": "plain", "host": "h", "pid": 1})
    done = source / "random" / "seed_0"
    atomic_write_json(done / "outcome.json", {**json.loads((waiting / "outcome.json").read_text()),
                                              "status": "done", "exit_code": 0})
    proc = report(source, tmp_path / "report")
    assert proc.returncode == 0, tail(proc)
    line = (f"{waiting}: unfinished (waiting_for_labels): 1 of 2 cycle(s) committed; its "
            f"results stop at cycle 0")
    assert line in proc.stdout
    assert line in (tmp_path / "report" / "report.md").read_text()
    assert f"{done}: unfinished" not in proc.stdout
