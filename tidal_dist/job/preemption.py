"""Stop requests: SIGTERM, SIGINT and SIGUSR1 (SLURM's pre-timeout signal, a cluster's preemption
notice, Ctrl-C) end a run with one agreed checkpoint and the preempted outcome (exit 75).

How a request travels (docs/launching.md has the measurements behind each rule):

* The signal handler does nothing itself. Python's C-level handler also writes the signal number
  into a wakeup pipe (signal.set_wakeup_fd), and a watcher thread reads it. So a request is
  noticed even while the main thread is blocked inside a collective or a C call, where a Python
  handler would not run.
* The first signal sets a flag. Training checks it at every step boundary with one tiny
  all-reduce (`agreed`), so all ranks stop after the same step and save one checkpoint;
  evaluation and scoring check it at every batch and agree once after their loop.
* DataLoader workers receive the same signals when the whole process group is signalled (SLURM,
  `kill -TERM -PGID`, torchrun's killpg per rank, Ctrl-C). Left alone, SIGTERM and SIGUSR1 kill
  them and the rank crashes with "DataLoader worker ... killed by signal". `loader_worker_init`
  (pass it as `worker_init_fn` to every DataLoader) makes a worker survive them and forward them
  to its rank, so a signal sent to a worker alone also stops the run cleanly; a SIGTERM from the
  rank itself (the DataLoader terminating a slow worker) still ends the worker.
* A second SIGTERM or SIGINT, more than DUPLICATE_WINDOW_S after the first, exits at once (exit
  75). The window exists because launchers forward signals: under torchrun a rank usually gets
  the group's SIGTERM and the agent's copy milliseconds apart, and a worker's forwarded copy
  arrives just as fast. SIGUSR1 is a notice and never escalates.
* A deadline (`run.preempt_deadline_s`, capped below torchrun's grace period when running under
  it) bounds the time from the first signal to a forced exit: torchrun SIGKILLs its workers after
  TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 30 s), and SLURM after its KillWait.
* Under torchrun / `accelerate launch` a rank whose launcher died (SIGUSR1 kills torchrun's agent
  unless it is told to handle it; SIGTERM kills a one-process `accelerate launch`) treats the
  orphaning as a stop request, instead of training on with nobody to report to.

Forced exits (second signal, deadline) call the registered `on_forced_exit` hooks (the outcome
recorder) and then os._exit: committed state is safe because every commit is an atomic rename.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
ESCALATING = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_WINDOW_S = 3.0
TORCHRUN_GRACE_DEFAULT_S = 30  # torch.distributed.run's --shutdown-timeout default
DEADLINE_MARGIN_S = 5  # leave this much of the launcher's grace period for the forced exit


class Preempted(Exception):
    """Raised after the checkpoint is saved; recorded as the preempted outcome (exit 75)."""


_lock = threading.RLock()
_requested = False
_reason = ""
_first_at: float | None = None
_deadline_s: float | None = None
_disarmed_code: int | None = None
_watcher: threading.Thread | None = None
_wakeup_write_fd: int | None = None
_exit_hooks: list[Callable[[str], None]] = []
_main_noted = 0  # first requests made by the main thread's handler, not yet seen by the watcher


def _say(text: str) -> None:
    """A warning on every rank, through the project's logger (tqdm-safe: it does not glue itself
    to a progress bar; logging's last-resort handler prints it before logging is set up)."""
    rank = os.environ.get("RANK")
    where = f"[rank {rank}] " if rank not in (None, "") and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.getLogger("tidal_dist").warning("%s%s", where, text)


def request(reason: str = "stop requested") -> None:
    """Ask for a clean stop at the next boundary (also used by tests and the orphan check)."""
    global _requested, _reason, _first_at
    with _lock:
        if _requested:
            return
        _requested, _reason, _first_at = True, reason, time.monotonic()
    deadline = f"; forced exit after {_deadline_s:.0f} s" if _deadline_s else ""
    _say(f"{reason}: stopping at the next step or batch boundary (checkpoint, then exit "
         f"{EXIT_PREEMPTED}){deadline}; a second SIGTERM/SIGINT exits at once")


def requested() -> bool:
    return _requested


def reason() -> str:
    return _reason


def clear() -> None:
    global _requested, _reason, _first_at
    with _lock:
        _requested, _reason, _first_at = False, "", None


def on_forced_exit(hook: Callable[[str], None]) -> None:
    """`hook(message)` runs (in the watcher thread) just before a forced exit."""
    _exit_hooks.append(hook)


def disarm(exit_code: int) -> None:
    """The command has ended and recorded its outcome: no more deadlines; a signal from now on
    (e.g. during interpreter teardown) exits at once with `exit_code`."""
    global _disarmed_code
    _disarmed_code = exit_code


def _forced_exit(message: str) -> None:
    _say(f"{message}: exiting now without a new checkpoint; committed state is intact, run the "
         f"same command again to continue from the last checkpoint")
    for hook in list(_exit_hooks):
        try:
            hook(message)
        except Exception:  # noqa: BLE001 - the exit must happen whatever a hook does
            pass
    os._exit(EXIT_PREEMPTED)


def _on_signal(signum: int, from_pipe: bool = False) -> None:
    global _main_noted
    if signum not in STOP_SIGNALS:
        return  # the wakeup pipe carries every signal with a Python handler (e.g. SIGCHLD)
    if from_pipe:
        with _lock:
            if _main_noted:
                _main_noted -= 1  # the main thread's handler already made this one a request
                return
    name = signal.Signals(signum).name
    if _disarmed_code is not None:
        if signum in ESCALATING:
            os._exit(_disarmed_code)
        return
    if not _requested:
        request(f"got {name}")
        return
    if signum in ESCALATING and _first_at is not None \
            and time.monotonic() - _first_at > DUPLICATE_WINDOW_S:
        _forced_exit(f"second stop signal ({name})")


def _handler(signum, frame):  # noqa: ARG001
    """Runs in the main thread, whenever it next executes Python. It only makes a first request
    visible at once (the next step boundary sees it); everything else, a second signal included,
    is the watcher's to decide, because this may run long after the signal arrived."""
    global _main_noted
    if _watcher is None:
        _on_signal(signum)
        return
    if signum not in STOP_SIGNALS:
        return
    with _lock:
        if _requested or _disarmed_code is not None:
            return
        _main_noted += 1  # the watcher will read this signal's byte too: it skips it
    request(f"got {signal.Signals(signum).name}")


def _watch(read_fd: int, parent_pid: int | None) -> None:
    while True:
        ready, _, _ = select.select([read_fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(read_fd, 64)
            except BlockingIOError:
                data = b""
            for signum in data:
                _on_signal(signum, from_pipe=True)
        with _lock:
            late = (_requested and _disarmed_code is None and _deadline_s is not None
                    and _first_at is not None and time.monotonic() - _first_at > _deadline_s)
        if late:
            _forced_exit(f"the checkpoint did not finish within {_deadline_s:.0f} s of the stop "
                         f"request (run.preempt_deadline_s)")
        if parent_pid is not None and os.getppid() != parent_pid and not _requested:
            request(f"the launcher (pid {parent_pid}) exited")


def started_by_launcher(env=os.environ) -> bool:
    """torchrun (TORCHELASTIC_RUN_ID) or `accelerate launch` (ACCELERATE_MIXED_PRECISION, set in
    every mode, also the one-process one, which just waits on its child and dies of a SIGTERM
    without passing it on). A plain process is not watched: its parent is a shell, which may
    legitimately go away (nohup, setsid)."""
    return bool(env.get("TORCHELASTIC_RUN_ID") or env.get("ACCELERATE_MIXED_PRECISION"))


def launcher_grace_s(env=os.environ) -> float | None:
    """Seconds torchrun's agent waits between forwarding a signal and SIGKILL, when we run under
    it (`accelerate launch` runs the same agent). Only the environment variable is visible to the
    ranks, not a --shutdown-timeout command-line flag."""
    if not env.get("TORCHELASTIC_RUN_ID"):
        return None
    return float(env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") or TORCHRUN_GRACE_DEFAULT_S)


def effective_deadline(configured: float, env=os.environ) -> float:
    grace = launcher_grace_s(env)
    if grace is None:
        return configured
    return max(1.0, min(configured, grace - DEADLINE_MARGIN_S))


def install(deadline_s: float | None = None) -> None:
    """Handle the stop signals in this process (main thread only; idempotent)."""
    global _watcher, _deadline_s, _wakeup_write_fd
    _deadline_s = effective_deadline(deadline_s) if deadline_s else None
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    if _watcher is not None:
        # handlers_restored() may have handed the wakeup fd back to its previous owner
        signal.set_wakeup_fd(_wakeup_write_fd, warn_on_full_buffer=False)
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    _wakeup_write_fd = write_fd
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    parent = os.getppid() if started_by_launcher() else None
    _watcher = threading.Thread(target=_watch, args=(read_fd, parent), name="tidal-stop-watcher",
                                daemon=True)
    _watcher.start()


def interrupted_by_user() -> bool:
    """The stop request came from SIGINT (Ctrl-C, a notebook's "Interrupt kernel")."""
    return _requested and _reason == f"got {signal.SIGINT.name}"


@contextmanager
def handlers_restored():
    """For commands run inside a longer-lived process (a notebook, the Python API): whatever
    `install` sets up in here (signal handlers, the wakeup fd, forced-exit hooks, a stop request,
    the disarmed state) is undone on the way out, so after the run the process's own handlers
    are back; without this a later Ctrl-C would end the process with the run's exit code.
    Main thread only (signal handlers can only be set there)."""
    global _disarmed_code
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous_fd)
    hooks = len(_exit_hooks)
    clear()
    _disarmed_code = None
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        del _exit_hooks[hooks:]
        clear()
        _disarmed_code = None


def loader_worker_init(worker_id: int) -> None:  # noqa: ARG001
    """DataLoader worker_init_fn: survive the stop signals and hand them to the rank.

    The stop signals are blocked in the worker and read by a thread with sigwaitinfo, which
    tells who sent them. SIGTERM from the worker's own rank is the DataLoader shutting a slow
    worker down (torch terminates workers that do not exit in time): the worker exits, as torch's
    own handler would. Anything else (a process group's signal, Ctrl-C, a kill aimed at the
    worker) is forwarded to the rank, which stops the run cleanly."""
    parent = os.getppid()
    signal.set_wakeup_fd(-1)  # forked from the rank: its wakeup pipe is not ours to write
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_forward_to_rank, args=(parent,), name="tidal-worker-signals",
                     daemon=True).start()


def _forward_to_rank(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(set(STOP_SIGNALS))
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)
        if os.getppid() == parent:
            os.kill(parent, info.si_signo)


def agreed(device: torch.device) -> bool:
    """True on every rank if any rank got a stop request (a collective when distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _requested
    flag = torch.tensor([1 if _requested else 0], device=device, dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return False
    # Every rank is here (same flag): share why, so a rank that noticed nothing itself (rank 0
    # writes the outcome) records the cause another rank saw first, not an empty reason.
    reasons: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(reasons, _reason if _requested else "")
    if not _requested:
        request(next((f"rank {r}: {text}" for r, text in enumerate(reasons) if text),
                     "another rank stopped"))
    return True


def raise_if_agreed(device: torch.device, where: str) -> None:
    """Collective: every rank calls it at the same point; all raise Preempted if any rank stopped."""
    if agreed(device):
        raise Preempted(where)
