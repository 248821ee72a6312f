"""Start real launches in the background and find their processes, for the signal tests.

    job = start("torchrun", 2, ["-m", "tidal_dist", "run", ...])
    ranks = rank_pids(job)              # {rank: pid} of the rank processes
    workers = loader_worker_pids(pid)   # DataLoader workers of one rank
    os.killpg(os.getpgid(pid), SIGTERM)

Every launch gets its own session, so signalling its process group never reaches pytest.
torchrun (and `accelerate launch`, which runs torchrun's agent) starts each rank in a session of
its own too: a rank's process group is the rank and its loader workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.mp import REPO, cpu_env


def launcher_cmd(launcher: str, nproc: int, args: list[str]) -> list[str]:
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", *args]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                "launch/accelerate/cpu_2proc.yaml", "--num_processes", str(nproc),
                "--main_process_port", "0", *args]
    if launcher == "accelerate-1":  # no config file: accelerate's one-process "simple launcher"
        assert nproc == 1
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", *args]
    if launcher == "plain":
        assert nproc == 1
        return [sys.executable, *args]
    raise ValueError(launcher)


class Job:
    def __init__(self, proc: subprocess.Popen, log: Path, launcher: str) -> None:
        self.proc = proc
        self.log = log
        self.launcher = launcher

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 4000) -> str:
        return f"rc={self.proc.returncode}\n{self.output()[-n:]}"


def start(launcher: str, nproc: int, args: list[str], log: Path,
          env: dict[str, str] | None = None) -> Job:
    out = open(log, "w")
    proc = subprocess.Popen(launcher_cmd(launcher, nproc, args), cwd=REPO, env=cpu_env(env),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return Job(proc, log, launcher)


def rank_pids(job: Job, expected: int, timeout: float = 120) -> dict[int, int]:
    """{rank: pid} of the launch's rank processes (the launcher's direct children; a plain
    process is its own rank 0)."""
    if job.launcher == "plain":
        return {0: job.proc.pid}
    if job.launcher == "accelerate-1":
        wait_until(lambda: psutil.Process(job.proc.pid).children(), "the process", job)
        return {0: psutil.Process(job.proc.pid).children()[0].pid}
    deadline = time.time() + timeout
    while True:
        found = {}
        try:
            children = psutil.Process(job.proc.pid).children()
        except psutil.Error:
            children = []
        for child in children:
            try:
                rank = child.environ().get("RANK")
            except psutil.Error:
                continue
            if rank is not None:
                found[int(rank)] = child.pid
        if len(found) == expected:
            return found
        assert job.proc.poll() is None, f"the launch ended early:\n{job.tail()}"
        assert time.time() < deadline, f"ranks not found:\n{job.tail()}"
        time.sleep(0.2)


def loader_worker_pids(rank_pid: int) -> list[int]:
    """The DataLoader workers of a rank (torch names them pt_data_worker)."""
    try:
        return [c.pid for c in psutil.Process(rank_pid).children() if c.name() == "pt_data_worker"]
    except psutil.Error:
        return []


def wait_for(path: Path, job: Job | None = None, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if job is not None:
            assert job.proc.poll() is None, f"the run ended before {path} appeared:\n{job.tail()}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def wait_for_training(run_dir: Path, job: Job | None = None, timeout: float = 180) -> None:
    """Until rank 0 has logged a finished training epoch in RUN_DIR/metrics.jsonl (the ranks are
    inside their training loop)."""
    path = run_dir / "metrics.jsonl"

    def trained() -> bool:
        return path.exists() and '"event":"epoch"' in path.read_text()

    wait_until(trained, f"a training epoch in {path}", job, timeout)


def wait_until(predicate, what: str, job: Job | None = None, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if job is not None:
            assert job.proc.poll() is None, f"the run ended while waiting for {what}:\n{job.tail()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """`kill -SIG -PGID`: the process group `pid` leads (or belongs to)."""
    os.killpg(os.getpgid(pid), sig)


def alive(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
