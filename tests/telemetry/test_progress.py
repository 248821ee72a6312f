"""Output that reads well where it lands: no carriage returns and a few plain lines per epoch when
the output is a file or a pipe (a batch log), bars only on a terminal."""

import logging
import os

import pytest

from tests.mp import run_module, tail
from tidal_dist.telemetry.progress import LineProgress, format_duration, progress, use_bars

EPOCHS, CYCLES = 3, 2


def test_a_run_into_a_pipe_writes_plain_lines_only(synthetic_dataset, tmp_path):
    proc = run_module(["run", f"data.root={synthetic_dataset}", "data.num_workers=0",
                       "model.backbone=small_cnn", "model.width=4", f"train.epochs={EPOCHS}",
                       "train.batch_size=8", "run.log_every=1", "al.initial=24", "al.budget=8",
                       f"al.cycles={CYCLES}", "al.subset_size=40", "al.score_batch_size=8",
                       f"run.dir={tmp_path / 'run'}"], env={"TIDAL_DIST_PROGRESS": ""})
    assert proc.returncode == 0, tail(proc)
    both = proc.stdout + proc.stderr
    assert "\r" not in both and "\x1b[" not in both  # no bar redraws, no cursor movement
    lines = both.splitlines()
    epoch_lines = [ln for ln in lines if " epoch " in ln]
    assert len(epoch_lines) == EPOCHS * CYCLES  # one per epoch, with rate and ETA
    assert all("samples/s" in ln and "ETA" in ln for ln in epoch_lines)
    for phase in ("evaluate", "score"):
        assert len([ln for ln in lines if f" {phase}: " in ln]) == CYCLES
    # start-up, per cycle (start, evaluate, score, commit), the summary: a few lines per epoch
    assert len(lines) <= EPOCHS * CYCLES + 4 * CYCLES + 6, both


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TIDAL_DIST_PROGRESS", raising=False)
    master, slave = os.openpty()
    read_end, write_end = os.pipe()
    with os.fdopen(slave, "w") as tty, os.fdopen(write_end, "w") as pipe:
        assert use_bars(tty) is True
        assert use_bars(pipe) is False
        monkeypatch.setenv("TIDAL_DIST_PROGRESS", "lines")
        assert use_bars(tty) is False
        monkeypatch.setenv("TIDAL_DIST_PROGRESS", "bar")
        assert use_bars(pipe) is True
    os.close(master)
    os.close(read_end)


def test_a_long_phase_prints_a_line_per_interval_with_rate_and_eta():
    bar = LineProgress(range(10), desc="cycle 0 epoch 1/5", unit="batches", interval_s=0.0)
    logger = logging.getLogger("tidal_dist")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # exactly the records of this logger, whatever else is set up
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert list(bar) == list(range(10))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 10
    assert lines[3].startswith("cycle 0 epoch 1/5: 4/10 batches (") and "ETA" in lines[3]


def test_no_lines_from_the_other_ranks(capsys):
    bar = progress(range(3), desc="x", enabled=False)
    assert list(bar) == [0, 1, 2]
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("seconds,text", [(5, "5s"), (65, "1m05s"), (7260, "2h01m"),
                                          (float("nan"), "?")])
def test_durations_read_short(seconds, text):
    assert format_duration(seconds) == text
