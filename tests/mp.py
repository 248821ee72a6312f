"""Start real multi-process jobs (torchrun, gloo on the CPU) from tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "TOKENIZERS_PARALLELISM": "false"})
    env.pop("TIDAL_DIST_CRASH_AT", None)
    # the checkout under test, not whichever one the venv's editable install points at: a script
    # started by path (tests/workers/*.py) does not have the repo on sys.path otherwise
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def torchrun(nproc: int, args: list[str], env: dict[str, str] | None = None,
             timeout: float = 240) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N ARGS...`; returns the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=cpu_env(env), capture_output=True, text=True,
                          timeout=timeout)


def run_module(args: list[str], env: dict[str, str] | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess:
    """One plain process: `python -m tidal_dist ARGS...`."""
    return subprocess.run([sys.executable, "-m", "tidal_dist", *args], cwd=REPO,
                          env=cpu_env(env), capture_output=True, text=True, timeout=timeout)


def tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-n:]}\nstderr:\n{proc.stderr[-n:]}"
