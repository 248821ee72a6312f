"""`tidal-dist sweep --slurm`: the array-job script, and what it does as a SLURM task. SLURM's
commands cannot exist here, so `srun` and `scontrol` are stand-ins that behave like them (srun
starts SLURM_NTASKS real processes with SLURM_PROCID set and returns the highest exit code;
scontrol records requeues); the tasks themselves are real runs."""

import json
import os
import re
import signal
import subprocess

import psutil
import pytest

from tests.mp import cpu_env, tail
from tests.sweeps import committed, sweep, wait_for_epoch, write_protocol

SRUN = """#!/usr/bin/env bash
# stand-in for srun: SLURM_NTASKS copies of the command, highest exit code wins
while [[ "$1" == -* ]]; do shift; done
pids=()
for ((i = 0; i < ${SLURM_NTASKS:-1}; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p"; r=$?; [ "$r" -gt "$rc" ] && rc=$r; done
exit "$rc"
"""
SCONTROL = """#!/usr/bin/env bash
# stand-in for scontrol: hostnames of the allocation, requeues recorded in $REQUEUE_LOG
case "$1" in
  show) echo localhost ;;
  requeue) echo "requeue $2" >> "$REQUEUE_LOG" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def planned(tmp_path, synthetic_dataset):
    protocol = write_protocol(tmp_path / "tiny.yaml", synthetic_dataset)
    out = tmp_path / "sw"
    proc = sweep(protocol, out, "random", "0,1", "--slurm", "train.epochs=2")
    assert proc.returncode == 0, tail(proc)
    return out, proc


def slurm_env(tmp_path, task):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return cpu_env({"PATH": f"{bindir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": str(task),
                    "SLURM_ARRAY_JOB_ID": "4242", "SLURM_JOB_ID": str(5000 + task),
                    "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_CPUS_PER_TASK": "1",
                    "SLURM_JOB_NODELIST": "node1", "REQUEUE_LOG": str(tmp_path / "requeues")})


def test_the_script_and_the_sbatch_line(planned):
    out, proc = planned
    script = out / "sweep.sbatch"
    assert f"sbatch --array=0-1 {script}" in proc.stdout
    text = script.read_text()
    for directive in ("#SBATCH --requeue", "#SBATCH --signal=USR1@90", "#SBATCH --open-mode=append",
                      f"#SBATCH --output={out}/slurm/%x-%A_%a.out"):
        assert directive in text
    assert not re.search(r"@[A-Z_]+@", text)  # every placeholder filled in
    assert "--task \"$2\"" in text and (out / "slurm").is_dir()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 2


def test_a_task_runs_its_run_and_a_finished_task_does_nothing(planned, tmp_path):
    out, _ = planned
    env = slurm_env(tmp_path, task=1)
    proc = subprocess.run(["bash", str(out / "sweep.sbatch")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, tail(proc)
    assert committed(out / "random/seed_1") == 2 and not (out / "random/seed_0").exists()
    proc = subprocess.run(["bash", str(out / "sweep.sbatch")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "finished (2/2 cycles), skipped" in proc.stdout
    assert not (tmp_path / "requeues").exists()


def test_a_preempted_task_checkpoints_and_requeues_itself(tmp_path, synthetic_dataset):
    protocol = write_protocol(tmp_path / "tiny.yaml", synthetic_dataset)
    out = tmp_path / "sw"
    proc = sweep(protocol, out, "random", "0", "--slurm", "train.epochs=200", "al.cycles=1")
    assert proc.returncode == 0, tail(proc)
    env = slurm_env(tmp_path, task=0)
    job = subprocess.Popen(["bash", str(out / "sweep.sbatch")], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_epoch(out / "random/seed_0")
        # SLURM signals the step's tasks (--signal=USR1@90): the python processes
        tasks = [p for p in psutil.Process(job.pid).children(recursive=True)
                 if p.cmdline()[1:3] == ["-m", "tidal_dist"]]
        assert tasks
        for p in tasks:
            p.send_signal(signal.SIGUSR1)
        output, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 75, output
    assert (tmp_path / "requeues").read_text() == "requeue 4242_0\n"
    assert "preempted: requeueing 4242_0" in output
    ckpt = out / "random/seed_0/work/cycle_0000/ckpt"
    assert ckpt.is_dir() and any(ckpt.iterdir())  # the requeued task resumes from here
