"""One run per run dir: rank 0 holds an exclusive lock on RUN_DIR/run.lock for the life of a
`run` or `train` command.

Two launches on one run dir (a user starting the same command twice, a SLURM requeue racing a job
that is still alive) would otherwise both write `work/` and `cycles/`. The lock is a
`flock(LOCK_EX)` on an open file, so the kernel frees it whenever the process ends, kill -9
included: there is no stale lock to clean up. The file says who holds it (host, pid, command,
since when) for the refusal message; its content is a note, the flock is what counts.

    acquire(run_dir, command)   the held lock; UserError (exit 2) naming the holder if another
                                process holds it; a warning and an unlocked handle on a filesystem
                                without locks (some network filesystems: ENOLCK / EOPNOTSUPP)
    probe(run_dir)              True held / False free / None unknown, without disturbing a run:
                                `tidal-dist status` asks this rather than racing a pid check

A probe takes a shared lock for an instant; acquire() retries for PROBE_GRACE_S before refusing,
so a status call never makes a launch fail. A flock belongs to the open file, which a fork shares:
a DataLoader worker still exiting after its rank would hold the lock and refuse the next launch (a
requeue). So every forked child closes its copy at once (os.register_at_fork); closing, unlike
LOCK_UN, leaves the parent's lock in place.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tidal_dist.job.errors import UserError

LOCK_NAME = "run.lock"
PROBE_GRACE_S = 2.0
# flock not offered by the filesystem: run unlocked, with a warning
UNSUPPORTED_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


_held: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


@dataclass
class RunDirLock:
    path: Path
    fd: int | None  # None: not locked (a filesystem without locks)

    def release(self) -> None:
        if self.fd is not None:
            _held.discard(self.fd)
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def holder(run_dir: Path) -> str:
    """Who holds the lock, from the note in the lock file."""
    try:
        info = json.loads(lock_path(run_dir).read_text(encoding="utf-8"))
        return (f"`{info['command']}` pid {info['pid']} on {info['host']}, since "
                f"{info['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name into the lock file"


def _flock(fd: int, flags: int, grace_s: float) -> bool:
    """flock with LOCK_NB, retried for grace_s; False if still held by someone else."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            fcntl.flock(fd, flags | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def acquire(run_dir: Path, command: str, grace_s: float = PROBE_GRACE_S) -> RunDirLock:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(run_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        locked = _flock(fd, fcntl.LOCK_EX, grace_s)
    except OSError as e:
        os.close(fd)
        if e.errno not in UNSUPPORTED_ERRNOS:
            raise
        print(f"tidal-dist {command}: warning: cannot lock '{path}' ({os.strerror(e.errno)}: "
              f"the filesystem offers no file locks); a second launch on this run dir would not "
              f"be refused: make sure only one runs", file=sys.stderr, flush=True)
        return RunDirLock(path, None)
    if not locked:
        who = holder(run_dir)
        os.close(fd)
        raise UserError(f"run.dir '{run_dir}' is in use by another launch: {who} (lock "
                        f"'{path}'); let it finish or stop it first (`tidal-dist status "
                        f"{run_dir}` shows its progress)")
    note = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only the note for the message is lost
    _held.add(fd)
    return RunDirLock(path, fd)


def probe(run_dir: Path) -> bool | None:
    """Whether a launch holds the run dir's lock now; None if there is no lock file or the
    filesystem cannot tell."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY)
    except OSError:
        return None
    try:
        if _flock(fd, fcntl.LOCK_SH, 0.0):
            return False  # closing fd below releases the shared lock at once
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
