"""The run's outcome, recorded in the run directory so that no launcher can lose it.

torchrun and `accelerate launch` turn every non-zero exit of a rank into their own exit 1 (with a
traceback), so a requeue decision cannot rest on the exit code. Instead rank 0 records

    RUN_DIR/outcome.json   {"status", "exit_code", "message", "time", "world_size", ...}

atomically when a command ends, and `tidal-dist status RUN_DIR` prints it and exits with its code:

    done 0 | failed 1 | bad_input 2 | waiting_for_labels 3 | not_finished 4 | preempted 75

`not_finished` is what status reports when there is no final record: the run never started in
that folder, is still running, or was killed without a chance to record (kill -9, the OOM
killer, a lost node). While a command runs, outcome.json says "running" with its host and pid.

A rank other than 0 that fails writes `outcome.rank{R}.json` (its own file), because rank 0 may
never learn why: it typically sees only a broken collective, or a SIGTERM from the launcher. Rank
0 and `status` both merge those files: a rank's failure recorded after this attempt started
replaces a "running", "preempted" or "failed" record, so the message names the real cause. Ranks
compare wall-clock times, which assumes the nodes' clocks agree to within a few seconds (NTP).

A rank killed outright (kill -9, the OOM killer) records nothing, and its peers see only a
broken connection. So every rank also writes `process.rank{R}.json` (host, pid) when the run
starts, and a failure (or a stop after one) names the ranks of this host whose process has died,
zombies included; ranks on other hosts cannot be checked, and the message says the cause is
unknown. `status` of a "running" record asks the run dir's lock (job/rundir_lock.py) whether a
launch still holds it, and falls back on the pid only where the filesystem has no locks.

Nothing is recorded while the run directory is not this run's: a config refused before anything
was written (the dry-run checks) or a run directory made with another config.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tidal_dist.job import distributed, preemption, rundir_lock
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_json

EXIT_CODES = {"done": 0, "failed": 1, "bad_input": 2, "waiting_for_labels": 3,
              "not_finished": 4, "preempted": preemption.EXIT_PREEMPTED}
EXIT_NOT_FINISHED = EXIT_CODES["not_finished"]
RECORD_NAME = "outcome.json"
# Statuses a later failure of another rank explains better (its message is the cause).
SUPERSEDED_BY_RANK_FAILURE = frozenset({"running", "preempted", "failed"})
PRESENCE_SKEW_S = 120.0  # ranks of one attempt start within this of each other


@dataclass
class Outcome:
    status: str  # one of EXIT_CODES, or "running"
    exit_code: int
    message: str
    time: str  # ISO 8601, UTC
    unix_time: float
    started: float  # unix time the recording process started this attempt
    world_size: int
    command: str  # run | train
    launcher: str  # torchrun | srun | plain
    host: str
    pid: int
    rank: int = 0

    @staticmethod
    def make(status: str, message: str, command: str, started: float, rank: int = 0) -> Outcome:
        now = time.time()
        return Outcome(status=status, exit_code=EXIT_CODES.get(status, EXIT_NOT_FINISHED),
                       message=message, time=datetime.fromtimestamp(now, timezone.utc).isoformat(
                           timespec="seconds"), unix_time=now, started=started,
                       world_size=distributed.world_size(), command=command,
                       launcher=distributed.launcher_name(), host=socket.gethostname(),
                       pid=os.getpid(), rank=rank)


def presence_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"process.rank{rank}.json"


def process_alive(pid: int) -> bool:
    """Whether `pid` (on this host) still runs: a zombie (killed, not yet reaped by its
    launcher) has ended; os.kill(pid, 0) alone says it runs, the race `status` lost after
    kill -9."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_ranks_note(run_dir: Path, since: float, me: int, wait_s: float = 3.0) -> str:
    """_dead_ranks_note, asked again for up to wait_s while no rank is found dead: a peer's
    broken connection is seen while the killed peer is still tearing down (its sockets close
    before it becomes a zombie)."""
    deadline = time.monotonic() + wait_s
    while True:
        note, local_peers = _dead_ranks_note(run_dir, since, me)
        if "died" in note or not local_peers or time.monotonic() >= deadline:
            return note
        time.sleep(0.1)


def _dead_ranks_note(run_dir: Path, since: float, me: int) -> tuple[str, int]:
    """Which ranks of this attempt have died without recording why, from their presence files
    (process.rank{R}.json: host, pid): a rank on this host is checked by its pid; ranks on other
    hosts cannot be, and the note says so. Empty when every rank checked is alive."""
    dead, elsewhere, local = [], [], 0
    host = socket.gethostname()
    for path in sorted(run_dir.glob("process.rank*.json")):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            rank, pid, on, started = int(info["rank"]), int(info["pid"]), info["host"], \
                float(info["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if rank == me or started < since - PRESENCE_SKEW_S:
            continue  # this process, or a rank of an earlier attempt
        if on != host:
            elsewhere.append(rank)
            continue
        local += 1
        if not process_alive(pid):
            dead.append(f"rank {rank} (pid {pid} on {on})")
    if dead:
        return (f"{', '.join(dead)} died without recording an outcome (killed: kill -9, out of "
                f"memory?)", local)
    if elsewhere:
        return (f"which rank stopped first is unknown (ranks {sorted(elsewhere)} ran on other "
                f"hosts)", local)
    return "", local


def record_path(run_dir: Path, rank: int = 0) -> Path:
    return run_dir / (RECORD_NAME if rank == 0 else f"outcome.rank{rank}.json")


def _load(path: Path) -> Outcome | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Outcome(**{k: data[k] for k in Outcome.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError):
        return None


def rank_failures(run_dir: Path, since: float) -> list[Outcome]:
    """Failures other ranks recorded at or after `since`, earliest first."""
    found = [_load(p) for p in sorted(run_dir.glob("outcome.rank*.json"))]
    return sorted((o for o in found if o is not None and o.unix_time >= since),
                  key=lambda o: o.unix_time)


def merged(main: Outcome | None, run_dir: Path) -> Outcome | None:
    """Rank 0's record, replaced by the first failure another rank recorded since it started."""
    since = main.started if main is not None else 0.0
    failures = rank_failures(run_dir, since)
    if not failures:
        return main
    if main is not None and main.status not in SUPERSEDED_BY_RANK_FAILURE:
        return main
    first = failures[0]
    message = f"rank {first.rank} on {first.host}: {first.message}"
    if main is not None and main.status != "running" and main.message:
        message += f" (rank 0: {main.status}: {main.message})"
    return Outcome(**{**asdict(first), "message": message})


def read(run_dir: str | os.PathLike) -> Outcome | None:
    run_dir = Path(run_dir)
    return merged(_load(record_path(run_dir)), run_dir)


class Recorder:
    """One per command invocation and process. Rank 0 writes outcome.json, other ranks write
    outcome.rank{R}.json on failure. Writes only once `bind()` says the run dir is this run's."""

    def __init__(self, run_dir: str | os.PathLike, command: str) -> None:
        self.run_dir = Path(run_dir)
        self.command = command
        self.rank = distributed.rank()
        self.started = time.time()
        self.bound = False
        self.notes: list[str] = []
        self.finished = False
        self._lock = threading.Lock()
        preemption.on_forced_exit(self._forced)

    def bind(self) -> None:
        """The run dir holds this run's config: outcomes may be written from now on."""
        self.bound = True

    def running(self) -> None:
        if not self.bound:
            return
        # every rank says where it runs, so a failure can name a rank that was killed
        try:
            atomic_write_json(presence_path(self.run_dir, self.rank), {
                "rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(),
                "started": self.started})
        except OSError:
            pass  # only a better message is lost
        if self.rank == 0:
            self._write(Outcome.make("running", f"{self.command} in progress", self.command,
                                     self.started))

    def note(self, text: str) -> None:
        """Part of the final message (e.g. why a run ended early)."""
        self.notes.append(text)

    def finish(self, status: str, message: str) -> int:
        """Record the final status (once); returns its exit code."""
        with self._lock:
            if self.finished:
                return EXIT_CODES[status]
            self.finished = True
            if status in ("failed", "preempted") and self.bound:
                died = dead_ranks_note(self.run_dir, self.started, self.rank)
                message = f"{died}; then here: {message}" if died else message
            message = "; ".join([*self.notes, message] if message else self.notes)
            record = Outcome.make(status, message, self.command, self.started, self.rank)
            if self.bound:
                if self.rank == 0:
                    merged_record = merged(record, self.run_dir)
                    self._write(merged_record)
                    record = merged_record
                elif status in ("failed", "bad_input"):
                    self._write(record)
            return record.exit_code if self.rank == 0 else EXIT_CODES[status]

    def _forced(self, message: str) -> None:
        self.finish("preempted", message)

    def _write(self, record: Outcome) -> None:
        try:
            atomic_write_json(record_path(self.run_dir, self.rank), asdict(record))
        except OSError as e:  # a full or vanished disk must not hide the real outcome
            print(f"tidal-dist: cannot record the outcome in {self.run_dir}: {e}", file=sys.stderr)


_current: Recorder | None = None


def set_current(recorder: Recorder | None) -> None:
    global _current
    _current = recorder


def running() -> None:
    """Called by a command on every rank once config.yaml is written or matched: from now on
    the run dir is this run's, and rank 0 records "running" there."""
    if _current is not None:
        _current.bind()
        _current.running()


def note(text: str) -> None:
    """Add to the final outcome's message (e.g. why the run ended before al.cycles)."""
    if _current is not None:
        _current.note(text)


def unreadable(run_dir: Path) -> str | None:
    """Why RUN_DIR/outcome.json exists but holds no record (truncated, damaged), or None."""
    path = record_path(run_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"'{path}' is unreadable (truncated or damaged: {e})"
    required = [f.name for f in fields(Outcome) if f.default is MISSING]
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        return f"'{path}' is not an outcome record (no {', '.join(missing)})"
    return None


def describe(run_dir: Path, record: Outcome | None) -> tuple[str, int]:
    """(text for `tidal-dist status`, exit code)."""
    if record is None:
        damaged = unreadable(run_dir)
        if damaged:
            return (f"{run_dir}: not_finished (exit {EXIT_NOT_FINISHED}): the outcome is unknown: "
                    f"{damaged}", EXIT_NOT_FINISHED)
        if not (run_dir / "config.yaml").exists():
            return (f"{run_dir}: not_finished (exit {EXIT_NOT_FINISHED}): no run was ever started "
                    f"here", EXIT_NOT_FINISHED)
        return (f"{run_dir}: not_finished (exit {EXIT_NOT_FINISHED}): a run was set up here but "
                f"recorded no outcome yet", EXIT_NOT_FINISHED)
    when = f"{record.time}, {record.command}, {record.world_size} process(es) via {record.launcher}"
    if record.status == "running":
        held = rundir_lock.probe(run_dir)  # the kernel's answer, where the filesystem gives one
        alive = _alive(record) if held is None else held
        state = ("still running" if alive else
                 "stopped without recording an outcome (killed: kill -9, out of memory, lost node?)"
                 if alive is False else "running, or stopped without recording an outcome")
        return (f"{run_dir}: not_finished (exit {EXIT_NOT_FINISHED}): {state}; started {when}, "
                f"pid {record.pid} on {record.host}", EXIT_NOT_FINISHED)
    return f"{run_dir}: {record.status} (exit {record.exit_code}) at {when}: {record.message}", \
        record.exit_code


def _alive(record: Outcome) -> bool | None:
    """Whether the recording process still runs; None when it ran on another host."""
    if record.host != socket.gethostname():
        return None
    return process_alive(record.pid)


def status_main(run_dir: str | os.PathLike,
                waiting_note: Callable[[Path], str | None] | None = None) -> int:
    """`tidal-dist status RUN_DIR`. A run waiting for labels gets the line `waiting_note(run_dir)`
    adds (the command passes the oracle's live count: this room knows no oracle); the exit code
    stays the recorded one."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is not a run directory (it is a file)")
    record = read(run_dir)
    text, code = describe(run_dir, record)
    print(text)
    if waiting_note is not None and record is not None and record.status == "waiting_for_labels":
        note = waiting_note(run_dir)
        if note:
            print(note)
    return code
