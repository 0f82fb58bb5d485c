"""Progress of ``syncd once`` (a backfill can take hours): a bar with rate and ETA on a terminal, log lines otherwise.

It follows the passes through ``syncd.metrics.watching``: a folder scan adds its messages
to the total, each verdict counts one done. Mailboxes run in parallel; the display is one
line for all of them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import structlog

from syncd import metrics
from syncd.ledger import State

log = structlog.get_logger("syncd.progress")

LOG_EVERY = 10.0
"""Seconds between two progress log lines when stderr is not a terminal."""
DRAW_EVERY = 0.2
"""Seconds between two redraws of the bar (redrawing per message would cost more than the work on fast runs)."""
BAR_WIDTH = 24


class Progress:
    """Counts done / total messages and shows them; thread-safe (a ``metrics.Watcher``)."""

    def __init__(self, stream: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._shown = float("-inf")
        self._total = 0
        self._done = 0
        self._where = ""

    def folder_started(self, mailbox: str, folder: str, todo: int) -> None:
        with self._lock:
            self._total += todo
            self._where = f"{mailbox}/{folder}"
            self._show(force=False)

    def message_recorded(self, mailbox: str, folder: str, state: State) -> None:
        with self._lock:
            self._done += 1
            self._where = f"{mailbox}/{folder}"
            self._show(force=self._done == self._total)

    def finish(self) -> None:
        with self._lock:
            if self._total:
                self._show(force=True)
            if self._tty and self._total:
                self._stream.write("\n")
                self._stream.flush()

    def _numbers(self) -> tuple[float, float | None]:
        """Messages per second so far, and the seconds left at that rate (None before the first message)."""
        elapsed = max(self._clock() - self._started, 1e-6)
        rate = self._done / elapsed
        left = self._total - self._done
        return rate, (left / rate if rate > 0 else None)

    def _show(self, *, force: bool) -> None:
        now = self._clock()
        if not force and now - self._shown < (DRAW_EVERY if self._tty else LOG_EVERY):
            return
        self._shown = now
        rate, eta = self._numbers()
        if not self._tty:
            log.info("progress", done=self._done, total=self._total, per_second=round(rate, 1),
                     eta_seconds=None if eta is None else round(eta))
            return
        share = self._done / self._total if self._total else 1.0
        filled = int(share * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        # Clear the line, draw, and return to its start: a log line printed next overwrites the bar cleanly.
        self._stream.write(f"\x1b[K[{bar}] {self._done}/{self._total} {share:4.0%}  {rate:.1f} msg/s  "
                           f"ETA {_duration(eta)}  {self._where}\r")
        self._stream.flush()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


@contextmanager
def shown(stream: TextIO | None = None) -> Iterator[Progress]:
    """Show the progress of the passes run inside the block on ``stream`` (default stderr)."""
    stream = stream or sys.stderr
    progress = Progress(stream, tty=stream.isatty())
    with metrics.watching(progress):
        try:
            yield progress
        finally:
            progress.finish()
