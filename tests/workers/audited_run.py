"""`tidal-dist run` with an audit hook that lists every file this rank opens for writing under the
run directory (all_writes), and those whose name does not carry its rank (foreign_writes). Run
under torchrun by tests/cycle/test_loop.py.

usage: audited_run.py RUN_DIR AUDIT_OUT key=value ...
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's own tidal_dist

RANK = int(os.environ.get("RANK", "0"))
RUN_DIR = os.path.realpath(sys.argv[1])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
foreign_writes: list[str] = []
all_writes: list[str] = []


def audit(event, args):
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    path = os.path.realpath(os.fsdecode(path))
    writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
    if writes and path.startswith(RUN_DIR):
        all_writes.append(path)
        if f"rank{RANK}" not in os.path.basename(path):
            foreign_writes.append(path)


sys.addaudithook(audit)

from tidal_dist.cli import main  # noqa: E402

rc = main(["run", f"run.dir={sys.argv[1]}", *sys.argv[3:]])
with open(os.path.join(sys.argv[2], f"audit.rank{RANK}.json"), "w") as f:
    json.dump({"rc": rc, "foreign_writes": sorted(set(foreign_writes)),
               "all_writes": sorted(set(all_writes))}, f)
sys.exit(rc)
