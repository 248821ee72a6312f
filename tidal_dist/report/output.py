"""Where a report is written: built whole in a hidden sibling folder, then moved into --out.

A report is many files (figures, tables, exports). Building them straight into --out left half a
report on a full disk and a Python traceback for an --out that is a file or read-only. Instead:

    check --out (a folder or absent, its nearest existing parent writable)   -> UserError, exit 2
    build everything in OUT_PARENT/.OUT.report-partial/                       -> on a write error:
                                                                                  removed, exit 2
    move each top-level entry into --out (renames on one filesystem)

--out may already hold other files (a run dir's `report/` next to notes): only the entries the
report writes are replaced, nothing else in the folder is touched.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tidal_dist.cycle.lifecycle import FULL_BELOW_BYTES, OUTPUT_ERRNOS
from tidal_dist.job.errors import UserError

T = TypeVar("T")

# The output location failing, not the program (a run's list, and a path that turned into a
# file meanwhile): a clean error naming --out.
REPORT_OUTPUT_ERRNOS = OUTPUT_ERRNOS | {errno.ENOTDIR, errno.EEXIST}


def staging_folder(out: Path) -> Path:
    return out.absolute().parent / f".{out.name}.report-partial"


def _why(exc: BaseException, staging: Path) -> str | None:
    """The output location's problem behind `exc`, or None when it is a bug."""
    if isinstance(exc, OSError) and exc.errno in REPORT_OUTPUT_ERRNOS:
        return f"cannot write '{exc.filename or staging}': {os.strerror(exc.errno)}"
    # matplotlib and PIL may wrap the failed write; the free space tells what happened
    try:
        free = shutil.disk_usage(staging.parent).free
    except OSError:
        return None
    if free < FULL_BELOW_BYTES:
        return f"the filesystem is full ({free} bytes free) ({type(exc).__name__}: {exc})"
    return None


def write_staged(out: Path, build: Callable[[Path], T]) -> T:
    """Call build(folder) on an empty staging folder, then move what it wrote into `out`."""
    from tidal_dist.cycle.plan import check_output_location

    out = Path(out)
    check_output_location(out, "--out")
    staging = staging_folder(out)
    try:
        if staging.exists():  # left over from a killed report
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        result = build(staging)
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        why = _why(e, staging)
        if why is None:
            raise
        raise UserError(f"--out '{out}': {why}; nothing was written there (an earlier report in "
                        f"it is intact)") from None
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.is_symlink() or target.exists():
            target.unlink()
        os.replace(entry, target)
    staging.rmdir()
    return result
