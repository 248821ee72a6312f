"""The recorded outcome (RUN_DIR/outcome.json) and `tidal-dist status`, under torchrun, accelerate
launch and a plain process, for every status; and the merge of other ranks' failure records."""

import csv
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.mp import REPO, cpu_env, run_module, tail
from tests.procs import launcher_cmd
from tidal_dist.job import outcome
from tidal_dist.job.fsutil import atomic_write_json


def status_of(run_dir):
    proc = run_module(["status", str(run_dir)])
    return proc.returncode, proc.stdout + proc.stderr


def launch(launcher, args, env=None):
    nproc = 1 if launcher == "plain" else 2
    cmd = launcher_cmd(launcher, nproc, ["-m", "tidal_dist", "run", *args])
    return subprocess.run(cmd, cwd=REPO, env=cpu_env(env), capture_output=True, text=True,
                          timeout=300)


def write_labels(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(rows)


@pytest.mark.timeout(600)  # seven launches, two of them before any training
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate", "plain"])
def test_every_status_is_recorded_whatever_the_launcher_returns(synthetic_dataset, tmp_path,
                                                                launcher):
    run_dir = tmp_path / "run"
    args = [f"data.root={synthetic_dataset}", "data.num_workers=1", "model.backbone=small_cnn",
            "model.width=4", "train.epochs=2", "train.batch_size=16", "train.checkpoint_every=1",
            "al.initial=20", "al.budget=6", "al.cycles=2", "al.subset_size=40",
            "al.oracle=file", f"run.dir={run_dir}"]
    world = 1 if launcher == "plain" else 2
    # What each launcher returns for a rank exit code: plain passes it through, torchrun and
    # accelerate launch turn every non-zero one into 1.
    passes = launcher == "plain"

    def check(proc, status, code, *words):
        record = outcome.read(run_dir)
        assert record is not None, tail(proc)
        assert (record.status, record.exit_code) == (status, code), tail(proc)
        assert record.world_size == world and record.command == "run"
        assert record.launcher == ("plain" if launcher == "plain" else "torchrun")
        for word in words:
            assert word in record.message, record.message
        rc, text = status_of(run_dir)
        assert rc == code and status in text, text
        assert proc.returncode == (code if passes else min(code, 1)), tail(proc)

    # a person labels from the first query: cycle 0's initial set, then cycle 0's queries
    check(launch(launcher, args), "waiting_for_labels", 3, "labels/initial.csv")
    initial = [int(r["id"]) for r in csv.DictReader(open(run_dir / "queries" / "initial.csv"))]
    write_labels(run_dir / "labels" / "initial.csv", [(i, i % 5) for i in initial])
    check(launch(launcher, args), "waiting_for_labels", 3, "labels/cycle_0.csv")
    queried = [int(r["id"]) for r in csv.DictReader(open(run_dir / "queries" / "cycle_0.csv"))]

    write_labels(run_dir / "labels" / "cycle_0.csv", [(i, 9) for i in queried])  # 9: no such class
    bad = launch(launcher, args)
    check(bad, "bad_input", 2, "labels file", "out of range")
    assert not re.search(r'File ".*/tidal_dist/', bad.stderr), bad.stderr  # no traceback of ours

    write_labels(run_dir / "labels" / "cycle_0.csv", [(i, i % 5) for i in queried])
    who = "@rank1" if world == 2 else ""
    failed = launch(launcher, args, env={"TIDAL_DIST_CRASH_AT": f"raise_epoch:0:1{who}"})
    check(failed, "failed", 1, "injected failure at epoch 0, step 1")
    if world == 2:  # the cause comes from rank 1's own record, not rank 0's broken collective
        assert outcome.read(run_dir).rank == 1
        assert (run_dir / "outcome.rank1.json").exists()

    stopped = launch(launcher, args, env={"TIDAL_DIST_CRASH_AT": "sigterm_epoch:1:0@rank0"})
    check(stopped, "preempted", 75, "got SIGTERM", "checkpoint saved")

    done = launch(launcher, args)
    check(done, "done", 0, "2 cycles done")
    assert (run_dir / "cycles" / "cycle_0001").is_dir()


def test_a_bad_setting_for_a_new_run_records_nothing(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module(["run", f"data.root={synthetic_dataset}", "al.initial=5000",
                       f"run.dir={run_dir}"])
    assert proc.returncode == 2 and "al.initial" in proc.stderr
    assert not run_dir.exists()
    rc, text = status_of(run_dir)
    assert rc == outcome.EXIT_NOT_FINISHED and "no run was ever started" in text


# --------------------------------------------------------------------------------------------
# The merge rules, on records written by hand


def record(run_dir, status, rank=0, started=100.0, at=200.0, message="m", host=None, pid=1):
    o = outcome.Outcome(status=status, exit_code=outcome.EXIT_CODES.get(status, 4), message=message,
                        time="t", unix_time=at, started=started, world_size=2, command="run",
                        launcher="torchrun", host=host or "elsewhere", pid=pid, rank=rank)
    atomic_write_json(outcome.record_path(run_dir, rank), o.__dict__)


@pytest.mark.parametrize("main_status, expect", [
    ("running", "failed"), ("preempted", "failed"), ("failed", "failed"), ("done", "done"),
    ("waiting_for_labels", "waiting_for_labels")])
def test_another_ranks_failure_explains_rank_0s_record(tmp_path, main_status, expect):
    record(tmp_path, main_status, message="gloo: connection closed")
    record(tmp_path, "failed", rank=1, at=150.0, message="RuntimeError: out of memory")
    got = outcome.read(tmp_path)
    assert got.status == expect
    if expect == "failed":
        assert got.rank == 1 and "rank 1 on elsewhere: RuntimeError: out of memory" in got.message


def test_stale_rank_records_of_an_earlier_attempt_are_ignored(tmp_path):
    record(tmp_path, "preempted", started=500.0, at=600.0)
    record(tmp_path, "failed", rank=1, at=100.0)  # before this attempt started
    assert outcome.read(tmp_path).status == "preempted"


def test_a_rank_failure_before_rank_0_recorded_anything(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    record(tmp_path, "bad_input", rank=3, message="shard 'x' is corrupted")
    got = outcome.read(tmp_path)
    assert (got.status, got.exit_code, got.rank) == ("bad_input", 2, 3)


def test_status_of_a_running_and_of_a_vanished_run(tmp_path):
    import socket

    record(tmp_path, "running", host=socket.gethostname(), pid=os.getpid())
    rc, text = status_of(tmp_path)
    assert rc == 4 and "still running" in text
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    record(tmp_path, "running", host=socket.gethostname(), pid=int(dead))
    rc, text = status_of(tmp_path)
    assert rc == 4 and "stopped without recording an outcome" in text


def test_status_finds_the_run_dir_from_a_config(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    record(run_dir, "done", at=time.time())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"run": {"dir": str(tmp_path / "other")}}))
    proc = run_module(["status", "--config", str(cfg), f"run.dir={run_dir}"])
    assert proc.returncode == 0 and "done" in proc.stdout


def test_a_truncated_record_is_reported_unreadable(tmp_path):
    record(tmp_path, "done", at=time.time())
    (tmp_path / "config.yaml").write_text("{}")
    whole = (tmp_path / "outcome.json").read_text()
    (tmp_path / "outcome.json").write_text(whole[: len(whole) // 2])
    rc, text = status_of(tmp_path)
    assert rc == 4 and "outcome.json' is unreadable (truncated or damaged" in text
    assert "recorded no outcome yet" not in text


def test_status_right_after_kill_9_of_an_unreaped_process(tmp_path):
    """The killed process is a zombie until its launcher reaps it: it has ended, though a
    signal-0 check of its pid still succeeds."""
    import socket

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        record(tmp_path, "running", host=socket.gethostname(), pid=child.pid)
        os.kill(child.pid, 9)
        deadline = time.time() + 30
        while open(f"/proc/{child.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        rc, text = status_of(tmp_path)
        assert rc == 4 and "stopped without recording an outcome" in text, text
    finally:
        child.wait()


def test_the_rank_killed_is_named_not_the_survivors_gloo_error(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", f"data.root={synthetic_dataset}", "data.num_workers=0",
            "model.backbone=small_cnn", "model.width=4", "train.epochs=3", "train.batch_size=16",
            "al.initial=40", "al.budget=10", "al.cycles=1", "al.subset_size=40",
            f"run.dir={run_dir}"]
    proc = subprocess.run(launcher_cmd("torchrun", 2, ["-m", "tidal_dist", *args]), cwd=REPO,
                          env=cpu_env({"TIDAL_DIST_CRASH_AT": "epoch:1:0@rank1"}),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, tail(proc)
    rc, text = status_of(run_dir)
    assert rc in (1, 75), text
    assert re.search(r"rank 1 \(pid \d+ on [^)]+\) died without recording an outcome", text), text
