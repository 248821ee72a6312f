"""`tidal-dist sweep`: the plan and its layout, bad input, resume (a finished run is not rerun, an
interrupted one continues), --task, a launcher, preemption, and a sweep whose runs share the
processes of a 2-process launch. Real runs on the synthetic dataset."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.mp import REPO, cpu_env, run_module, tail, torchrun
from tests.sweeps import committed, snapshot, sweep, wait_for_epoch, write_protocol

RUNS = ["random/seed_0", "random/seed_1", "tidal_entropy/seed_0", "tidal_entropy/seed_1"]


@pytest.fixture
def protocol(tmp_path, synthetic_dataset):
    return write_protocol(tmp_path / "tiny.yaml", synthetic_dataset)


def test_print_lists_one_command_per_run_and_writes_nothing(protocol, tmp_path):
    out = tmp_path / "sw"
    proc = sweep(protocol, out, "random,tidal_entropy", "0,1", "train.epochs=3", "--print")
    assert proc.returncode == 0, tail(proc)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4
    for line, name in zip(lines, RUNS):
        strategy, seed = name.split("/seed_")
        assert line.startswith(f"tidal-dist run --config {protocol} train.epochs=3")
        assert line.endswith(f"al.strategy={strategy} run.seed={seed} run.dir={out / name}")
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--strategies", "random,nope"], "unknown strategy 'nope'; choose one of"),
    (["--strategies", "random", "run.seed=3"], "the sweep sets run.seed for each run itself"),
    (["--strategies", "random", "--seeds", "0,x"], "--seeds: 'x' is not an integer"),
    (["--strategies", "random,random"], "names an entry twice"),
    (["--strategies", "random", "train.epochz=3"], "unknown config key 'train.epochz'"),
    (["--strategies", "random", "--jobs", "0"], "--jobs 0: expected 1 or more runs at once"),
    (["--strategies", "random", "--jobs", "-1"], "--jobs -1: expected 1 or more runs at once"),
])
def test_bad_input_is_refused_before_anything_is_written(protocol, tmp_path, args, message):
    out = tmp_path / "sw"
    proc = run_module(["sweep", "--config", str(protocol), "--out", str(out), *args])
    assert proc.returncode == 2, tail(proc)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_sweep_resumes_an_interrupted_run_and_skips_finished_ones(protocol, tmp_path):
    out = tmp_path / "sw"
    # killed (SIGKILL) after scoring cycle 1 of the first run
    proc = sweep(protocol, out, "random", "0,1", env={"TIDAL_DIST_CRASH_AT": "after_score:1"})
    assert proc.returncode == -signal.SIGKILL, tail(proc)
    plan = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == ["random/seed_0", "random/seed_1"]
    assert plan["runs"][1]["args"][-3:] == ["al.strategy=random", "run.seed=1",
                                            f"run.dir={out / 'random/seed_1'}"]
    first, second = out / "random/seed_0", out / "random/seed_1"
    assert committed(first) == 1 and not second.exists()
    before = snapshot(first / "cycles")

    proc = sweep(protocol, out, "random", "0,1")
    assert proc.returncode == 0, tail(proc)
    assert "[1/2] random/seed_0: resuming at cycle 2/2" in proc.stdout
    assert "[2/2] random/seed_1: starting, 2 cycles" in proc.stdout
    assert committed(first) == 2 and committed(second) == 2
    after = snapshot(first / "cycles")
    assert {k: after[k] for k in before} == before  # the committed cycle was not redone

    finished = snapshot(out)
    proc = sweep(protocol, out, "random", "0,1")
    assert proc.returncode == 0, tail(proc)
    assert proc.stdout.count("finished (2/2 cycles), skipped") == 2
    assert "DistributedType" not in proc.stderr  # no run was even set up
    now = snapshot(out)
    assert {k: v for k, v in now.items() if k != "sweep.json"} == \
        {k: v for k, v in finished.items() if k != "sweep.json"}


def test_task_runs_one_run_of_the_plan_with_its_launcher(protocol, tmp_path):
    out = tmp_path / "sw"
    proc = sweep(protocol, out, "random,tidal_entropy", "0,1", "--slurm", "--launcher", "python")
    assert proc.returncode == 0, tail(proc)
    assert not any((out / name).exists() for name in RUNS)  # --slurm only plans
    proc = run_module(["sweep", "--out", str(out), "--task", "2"])
    assert proc.returncode == 0, tail(proc)
    assert [committed(out / name) for name in RUNS] == [0, 0, 2, 0]
    metrics = json.loads((out / RUNS[2] / "cycles/cycle_0001/metrics.json").read_text())
    assert metrics["strategy"] == "tidal_entropy" and metrics["run_seed"] == 0
    assert metrics["subset_seed"] == 0  # al.subset_seed unset: follows run.seed
    proc = run_module(["sweep", "--out", str(out), "--task", "4"])
    assert proc.returncode == 2 and "has 4 runs (tasks 0..3)" in proc.stderr
    proc = run_module(["sweep", "--out", str(out), "--task", "0", "--strategies", "random"])
    assert proc.returncode == 2 and "drop --strategies" in proc.stderr


@pytest.mark.parametrize("launcher", [[], ["--launcher", "python"]], ids=["in-process", "launcher"])
def test_a_preempted_run_stops_the_sweep_with_75(protocol, tmp_path, launcher):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "tidal_dist", "sweep", "--config", str(protocol),
           "--strategies", "random", "--seeds", "0,1", "--out", str(out), *launcher,
           "train.epochs=200", "al.cycles=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_epoch(out / "random/seed_0")
        proc.send_signal(signal.SIGUSR1)  # SLURM's notice before the time limit
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, stdout + stderr
    assert "random/seed_0 stopped with exit code 75" in stdout
    assert not (out / "random/seed_1").exists()
    ckpt = out / "random/seed_0/work/cycle_0000/ckpt"
    assert ckpt.is_dir() and any(ckpt.iterdir())  # it checkpointed before leaving


@pytest.mark.multiprocess
def test_runs_share_the_processes_of_a_two_process_launch(protocol, tmp_path):
    out = tmp_path / "sw"
    proc = torchrun(2, ["-m", "tidal_dist", "sweep", "--config", str(protocol), "--strategies",
                        "tidal_entropy,random", "--seeds", "0", "--out", str(out)], timeout=400)
    assert proc.returncode == 0, tail(proc)
    for name in ("tidal_entropy/seed_0", "random/seed_0"):
        for k in range(2):
            m = json.loads((out / name / f"cycles/cycle_{k:04d}/metrics.json").read_text())
            assert m["world_size"] == 2
    # the second run, after the first in the same processes, equals the same run on its own
    alone = tmp_path / "alone"
    proc = torchrun(2, ["-m", "tidal_dist", "run", "--config", str(protocol), "al.strategy=random",
                        "run.seed=0", f"run.dir={alone}"])
    assert proc.returncode == 0, tail(proc)
    for k in range(2):
        a, b = alone / f"cycles/cycle_{k:04d}", out / f"random/seed_0/cycles/cycle_{k:04d}"
        np.testing.assert_array_equal(np.load(a / "queried.npz")["ids"], np.load(b / "queried.npz")["ids"])
        np.testing.assert_array_equal(np.load(a / "td/sum.npy"), np.load(b / "td/sum.npy"))
        assert json.loads((a / "metrics.json").read_text())["accuracy"] == \
            json.loads((b / "metrics.json").read_text())["accuracy"]


def test_jobs_run_at_once_each_with_its_log(protocol, tmp_path):
    out = tmp_path / "sw"
    proc = sweep(protocol, out, "random,tidal_entropy", "0", "--jobs", "2")
    assert proc.returncode == 0, tail(proc)
    names = ["random/seed_0", "tidal_entropy/seed_0"]
    assert [committed(out / name) for name in names] == [2, 2]
    spans = []
    for name in names:
        log = (out / "logs" / f"{name.replace('/', '_')}.log").read_text()
        assert "2 cycles done" in log
        records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        spans.append((records[0]["time"], records[-1]["time"]))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # the runs overlapped
    again = sweep(protocol, out, "random,tidal_entropy", "0", "--jobs", "2")
    assert again.returncode == 0 and again.stdout.count("skipped") == 2
