"""Progress output that reads well where it lands.

On a terminal: a tqdm bar (carriage-return updates, cleared when done). Anywhere else (a SLURM log,
a file, a pipe): no bar at all. A phase that runs longer than `LINE_INTERVAL_S` prints one plain
line per interval with its rate and ETA; the summary line at its end comes from the caller
(telemetry.run), so a short epoch costs one line in the log.

TIDAL_DIST_PROGRESS=bar|lines overrides the detection (e.g. `lines` under a terminal multiplexer
whose scrollback you want to keep).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("tidal_dist")

LINE_INTERVAL_S = 300.0  # a plain line at most this often while a long phase runs


def use_bars(stream: Any = None) -> bool:
    """True when progress should be drawn as bars: the stream (stderr by default) is a terminal."""
    forced = os.environ.get("TIDAL_DIST_PROGRESS", "").strip().lower()
    if forced in ("bar", "bars"):
        return True
    if forced in ("line", "lines"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m: short enough for a log line."""
    if seconds != seconds or seconds < 0:  # NaN or negative: unknown
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LineProgress:
    """The part of tqdm's interface the trainer and scorer use, printing plain lines instead."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", interval_s: float = LINE_INTERVAL_S, enabled: bool = True):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.desc, self.unit = total, desc, unit
        self.interval_s, self.enabled = interval_s, enabled
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.start = self.last_line = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self.last_line >= self.interval_s:
            self.last_line = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {format_duration((self.total - self.n) / rate)}"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc}: {done} {self.unit} ({rate:.1f} {self.unit}/s){eta}{extra}"

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True):
    """A tqdm bar on a terminal, a LineProgress elsewhere; silent where `enabled` is False (the
    ranks other than 0)."""
    if enabled and use_bars():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled)
