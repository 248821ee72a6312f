"""Running a sweep's runs one after another.

In process (no launcher): every process of the current launch (1 for a plain command, N under
torchrun / `accelerate launch`) runs each run in turn, as `tidal-dist run` would, keeping the
process group between runs. With a launcher ("torchrun --nproc_per_node 2", "python", ...) each run
is a subprocess `LAUNCHER -m tidal_dist run ...`.

With --jobs N (N > 1) up to N runs go at once, each a subprocess (`python -m tidal_dist run ...`
unless a launcher is given) with OMP_NUM_THREADS = cores / N and its output in OUT/logs/; the way
to fill a many-core machine with runs too small to use it alone.

A run whose al.cycles are all committed is skipped; an unfinished one resumes (that is what
`tidal-dist run` does on an existing run folder). The sweep stops at the first run that does not
finish (in parallel: starts no new run, lets the others finish), with that run's exit code: 75
preempted (run the same command again), 3 waiting for labels, 2 bad input, anything else a failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
import shlex
import signal
import subprocess
import sys
import time

from tidal_dist.job.distributed import rank, world_size
from tidal_dist.job.errors import UserError
from tidal_dist.sweep.plan import PlannedRun, Sweep, run_config, run_progress

log = logging.getLogger("tidal_dist")

EXIT_PREEMPTED = 75  # preemption.EXIT_PREEMPTED, without importing torch here


def say(text: str) -> None:
    if rank() == 0:
        print(f"tidal-dist sweep: {text}", flush=True)


def command(run: PlannedRun, launcher: str | None) -> list[str]:
    """The command that runs `run` on its own, as --print lists it."""
    if launcher:
        return [*shlex.split(launcher), "-m", "tidal_dist", *run.args]
    return ["tidal-dist", *run.args]


def execute(sweep: Sweep, indices: list[int], launcher: str | None, jobs: int = 1) -> int:
    if (launcher or jobs > 1) and world_size() > 1:
        raise UserError("--launcher and --jobs start each run's processes themselves: run "
                        "`tidal-dist sweep` as one plain process, or drop them to use the current "
                        "processes")
    if jobs > 1:
        return execute_parallel(sweep, indices, launcher or "python", jobs)
    total = len(indices)
    ran = 0
    for n, i in enumerate(indices, start=1):
        run = sweep.runs[i]
        done, cycles = run_progress(sweep, run)
        if done >= cycles:
            say(f"[{n}/{total}] {run.name}: finished ({done}/{cycles} cycles), skipped")
            continue
        state = f"resuming at cycle {done + 1}/{cycles}" if done else f"starting, {cycles} cycles"
        say(f"[{n}/{total}] {run.name}: {state} in {sweep.run_dir(run)}")
        rc = run_subprocess(sweep, run, launcher) if launcher else run_in_process(run)
        if rc != 0:
            say(f"[{n}/{total}] {run.name} stopped with exit code {rc}; the sweep stops here "
                f"(run the same command again to continue)")
            return rc
        ran += 1
    if len(indices) > 1 or ran:
        say(f"{total} run(s) finished in {sweep.out}; compare them with "
            f"`tidal-dist report {sweep.out} --out {sweep.out / 'report'}`")
    return 0


def run_in_process(run: PlannedRun) -> int:
    """As `tidal-dist run` would: checked before anything is written, outcome recorded."""
    from tidal_dist.cycle.lifecycle import run_command
    from tidal_dist.cycle.loop import run_main

    cfg = run_config(run)
    return run_command(cfg, "run", lambda: run_main(cfg, end_training=False))


@contextmanager
def forwarding_stop_signals(children: Callable[[], Iterable[subprocess.Popen]]):
    """While inside: SIGTERM / SIGUSR1 / SIGINT sent to the sweep go to every child's whole
    process group (so the runs checkpoint even when a launcher would die of the signal). Yields
    the list of signals received."""
    received: list[int] = []

    def forward(signum, frame):  # noqa: ARG001
        received.append(signum)
        for child in list(children()):
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def preempted_by(received: list[int]) -> bool:
    return any(s in (signal.SIGTERM, signal.SIGUSR1) for s in received)


def exit_status(rc: int) -> int:
    return rc if rc >= 0 else 128 - rc  # killed by a signal: the shell's convention


def start(sweep: Sweep, run: PlannedRun, launcher: str, **popen) -> subprocess.Popen:
    cmd = command(run, launcher)
    if cmd[0] == "python":
        cmd[0] = sys.executable  # the interpreter this sweep runs in, not whatever is on PATH
    try:
        return subprocess.Popen(cmd, cwd=sweep.cwd, start_new_session=True, **popen)
    except FileNotFoundError:
        raise UserError(f"--launcher: cannot start '{cmd[0]}' (not found on PATH)") from None


def run_subprocess(sweep: Sweep, run: PlannedRun, launcher: str) -> int:
    """`LAUNCHER -m tidal_dist run ...` in its own process group. SIGTERM / SIGUSR1 / SIGINT sent
    to the sweep go to that whole group (so the run's processes checkpoint even when the launcher
    itself would die of the signal); after a TERM or USR1 the sweep reports preemption (75)."""
    child = start(sweep, run, launcher)
    with forwarding_stop_signals(lambda: [child]) as received:
        rc = child.wait()
    if rc != 0 and preempted_by(received):
        return EXIT_PREEMPTED
    return exit_status(rc)


def execute_parallel(sweep: Sweep, indices: list[int], launcher: str, jobs: int) -> int:
    """Up to `jobs` runs at once, each `LAUNCHER -m tidal_dist run ...` in its own process group,
    output to OUT/logs/<strategy>_seed<seed>.log. Signals to the sweep go to every running run."""
    todo = []
    for i in indices:
        done, cycles = run_progress(sweep, sweep.runs[i])
        if done >= cycles:
            say(f"{sweep.runs[i].name}: finished ({done}/{cycles} cycles), skipped")
        else:
            todo.append(i)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    (sweep.out / "logs").mkdir(parents=True, exist_ok=True)
    running: dict[subprocess.Popen, PlannedRun] = {}
    first_failure = 0
    with forwarding_stop_signals(lambda: running) as received:
        while running or (todo and not first_failure and not received):
            while todo and len(running) < jobs and not first_failure and not received:
                run = sweep.runs[todo.pop(0)]
                log_path = sweep.out / "logs" / f"{run.name.replace('/', '_')}.log"
                with open(log_path, "ab") as log_file:
                    child = start(sweep, run, launcher, env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT)
                running[child] = run
                say(f"{run.name}: started in {sweep.run_dir(run)} (log {log_path})")
            time.sleep(0.5)
            for child in [c for c in running if c.poll() is not None]:
                run, rc = running.pop(child), exit_status(child.returncode)
                if rc == 0:
                    say(f"{run.name}: finished")
                    continue
                say(f"{run.name} stopped with exit code {rc}; no new run starts (run the same "
                    f"command again to continue)")
                first_failure = first_failure or rc
    if preempted_by(received):
        return EXIT_PREEMPTED
    if not first_failure:
        say(f"{len(indices)} run(s) finished in {sweep.out}; compare them with "
            f"`tidal-dist report {sweep.out} --out {sweep.out / 'report'}`")
    return first_failure


def finish_processes() -> None:
    """After the last in-process run: release the process group the runs shared."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print_commands(sweep: Sweep, launcher: str | None) -> None:
    for run in sweep.runs:
        print(shlex.join(command(run, launcher)))


def task_indices(sweep: Sweep, task: int) -> list[int]:
    if not 0 <= task < len(sweep.runs):
        raise UserError(f"--task {task}: {sweep.out}/sweep.json has {len(sweep.runs)} runs "
                        f"(tasks 0..{len(sweep.runs) - 1})")
    return [task]
