"""Shared by the SLURM stand-ins in this folder (sbatch, srun, scontrol): job state on disk and
process-tree helpers. Standard library only: the stand-ins run under whatever `python3` is on PATH.

They stand in for what cannot exist on a test machine (a SLURM controller) and behave like the
real commands where the launch kits depend on them, starting real local processes:

* sbatch runs the batch script in the foreground (the real one queues it and returns at once),
  with the job's SLURM_* variables, its #SBATCH options (command-line options win), and its
  output file (appended with --open-mode=append). When the script asked `scontrol requeue`, the
  job runs again with SLURM_RESTART_COUNT + 1 and the same job id.
* --signal=SIG@T is delivered when the file named by FAKE_SLURM_SIGNAL_WHEN exists (the test's
  stand-in for "T seconds before the time limit"), once per job, to every process of every job
  step: the task processes and all their descendants, as proctrack/cgroup does.
* srun starts the step's tasks with the step variables (SLURM_PROCID, SLURM_LOCALID,
  SLURM_NODEID, SLURM_STEP_NUM_TASKS, ...), forwards the signals it gets to them, kills the
  rest of the step when one task fails under --kill-on-bad-exit, kills what is left of the step
  when the tasks are gone, and returns the highest task exit code.
* scontrol knows `show hostnames [LIST]` and `requeue JOBID`.

State lives in $FAKE_SLURM_STATE (default ./.fake-slurm): job ids, requeue requests, the pids
of running steps, and starts.jsonl (one line per start of a batch script, with its exit code).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path


def state_dir() -> Path:
    d = Path(os.environ.get("FAKE_SLURM_STATE", ".fake-slurm")).absolute()
    d.mkdir(parents=True, exist_ok=True)
    return d


def next_job_id() -> int:
    counter = state_dir() / "last_job_id"
    job = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(job))
    return job


def append_json_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def expand_hostlist(text: str) -> list[str]:
    """'node[01-02],login' -> ['node01', 'node02', 'login'] (one bracket group per name)."""
    out = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", text):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not m:
            out.append(item)
            continue
        prefix, body, suffix = m.groups()
        for part in body.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{prefix}{i:0{len(lo)}d}{suffix}")
    return out


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields[0] is the state, fields[1] the parent pid
            kids.append(int(entry))
    return kids


def descendants_of(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for kid in children_of(todo.pop()):
            found.append(kid)
            todo.append(kid)
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def step_pid_files(job_id: str) -> list[Path]:
    return sorted((state_dir() / "steps").glob(f"{job_id}.*.pid"))


def wait_quietly(seconds: float) -> None:
    time.sleep(seconds)
