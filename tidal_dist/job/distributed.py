"""Rank arithmetic as pure functions of the launcher's environment variables.

torchrun and `accelerate launch` set RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT).
A bare `srun python -m tidal_dist ...` (one SLURM task per GPU) sets SLURM's own variables instead:
SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_TASKS_PER_NODE and the
node list. `launcher_env` translates those into the torchrun names, and `export_launcher_env` puts
them into os.environ before Accelerate reads it. A plain `python -m tidal_dist` has none of them
and is rank 0 of 1.

SLURM's variables are trusted only inside a job step (SLURM_STEP_NUM_TASKS is set by srun): the
batch script itself also carries SLURM_PROCID=0 and SLURM_NTASKS=N, and a single process started
there must not wait for N-1 peers that nobody launched.

Reading the environment (rather than asking torch.distributed) lets the data readers and file
naming work before, and without, a process group.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

DEFAULT_PORT_BASE = 20000  # MASTER_PORT under bare srun: 20000 + job id % 20000


def _env_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def _split_top_level(text: str) -> list[str]:
    """Split on the commas that are not inside [...]."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_host(item: str) -> list[str]:
    match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
    if match is None:
        return [item]
    prefix, ranges, rest = match.groups()
    heads = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if hi:
            heads += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
        else:
            heads.append(prefix + lo)
    return [head + tail for head in heads for tail in _expand_host(rest)]


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list -> host names, in order: 'gpu[01-03,7],login' ->
    ['gpu01', 'gpu02', 'gpu03', 'gpu7', 'login']. Zero padding follows each range's first bound,
    as `scontrol show hostnames` prints it."""
    return [host for item in _split_top_level(text) for host in _expand_host(item)]


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM's '2(x3),1' -> [2, 2, 2, 1] (tasks on each node of the step, in node order)."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ValueError(f"cannot read tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def in_slurm_step(env: Mapping[str, str]) -> bool:
    return bool(env.get("SLURM_STEP_NUM_TASKS")) and bool(env.get("SLURM_PROCID"))


def launcher_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torchrun-style variables to add to `env` so that Accelerate and torch.distributed find
    their peers; empty when a launcher already set them, or outside a SLURM step. Variables that
    are already set are never overridden (a user's MASTER_PORT wins)."""
    if env.get("RANK") not in (None, "") or not in_slurm_step(env):
        return {}
    world = int(env["SLURM_STEP_NUM_TASKS"])
    node = _env_int(env, ("SLURM_NODEID",), 0)
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    local_world = expand_tasks_per_node(per_node)[node] if per_node else world
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(world),
           "LOCAL_RANK": str(_env_int(env, ("SLURM_LOCALID",), 0)),
           "LOCAL_WORLD_SIZE": str(local_world), "GROUP_RANK": str(node)}
    if not env.get("MASTER_ADDR"):
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") \
            or env.get("SLURM_NODELIST")
        hosts = expand_hostlist(nodelist) if nodelist else []
        out["MASTER_ADDR"] = hosts[0] if hosts else "127.0.0.1"
    if not env.get("MASTER_PORT"):
        job = _env_int(env, ("SLURM_JOB_ID", "SLURM_JOBID"), 0)
        out["MASTER_PORT"] = str(DEFAULT_PORT_BASE + job % 20000)
    return out


def export_launcher_env() -> dict[str, str]:
    """Apply launcher_env to this process's environment (before any process group exists)."""
    added = launcher_env(os.environ)
    os.environ.update(added)
    return added


def world_size() -> int:
    return _env_int(os.environ, ("WORLD_SIZE",), 0) or \
        (int(os.environ["SLURM_STEP_NUM_TASKS"]) if in_slurm_step(os.environ) else 1)


def rank() -> int:
    if os.environ.get("RANK") not in (None, ""):
        return int(os.environ["RANK"])
    return int(os.environ["SLURM_PROCID"]) if in_slurm_step(os.environ) else 0


def local_rank() -> int:
    if os.environ.get("LOCAL_RANK") not in (None, ""):
        return int(os.environ["LOCAL_RANK"])
    return _env_int(os.environ, ("SLURM_LOCALID",), 0) if in_slurm_step(os.environ) else 0


def is_main_process() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def launcher_name(env: Mapping[str, str] = os.environ) -> str:
    """Who started this process, for messages and outcome records."""
    if env.get("TORCHELASTIC_RUN_ID"):
        return "torchrun"  # also `accelerate launch`, which runs torchrun's agent in-process
    if in_slurm_step(env):
        return "srun"
    return "plain"
