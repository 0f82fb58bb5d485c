"""Is every mailbox pass making progress? The daemon feeds systemd's watchdog only while it is.

A pass that is running but has not completed a single mail-source step (connect, list,
select, search, one fetched message) for longer than the watchdog interval is *stalled*:
a hung server or a deadlock. Idle mailboxes (between polls) are never stalled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date

from syncd.settings import MailboxSettings
from syncd.source import Folder, MailSource, RawMessage, Selected


class Liveness:
    """When each running pass last made progress; thread-safe (passes run on worker threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, float] = {}

    def begin(self, mailbox: str) -> None:
        self.beat(mailbox)

    def beat(self, mailbox: str) -> None:
        with self._lock:
            self._running[mailbox] = self._clock()

    def end(self, mailbox: str) -> None:
        with self._lock:
            self._running.pop(mailbox, None)

    def stalled(self, limit: float) -> list[str]:
        """Mailboxes whose running pass has made no progress for more than ``limit`` seconds."""
        now = self._clock()
        with self._lock:
            return sorted(name for name, last in self._running.items() if now - last > limit)

    def watch(self, factory: Callable[[MailboxSettings], MailSource]) -> Callable[[MailboxSettings], MailSource]:
        """A source factory whose sources report each completed step as progress of their mailbox."""

        def open_watched(settings: MailboxSettings) -> MailSource:
            return _WatchedSource(factory(settings), lambda: self.beat(settings.name))

        return open_watched


class _WatchedSource:
    """A MailSource that calls ``beat`` after every step of the one it wraps."""

    def __init__(self, inner: MailSource, beat: Callable[[], None]):
        self._inner = inner
        self._beat = beat

    def __enter__(self) -> _WatchedSource:
        self._inner.__enter__()
        self._beat()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)

    def close(self) -> None:
        self._inner.close()

    def folders(self) -> list[Folder]:
        found = self._inner.folders()
        self._beat()
        return found

    def select(self, folder: str) -> Selected:
        selected = self._inner.select(folder)
        self._beat()
        return selected

    def uids_after(self, last_uid: int) -> list[int]:
        uids = self._inner.uids_after(last_uid)
        self._beat()
        return uids

    def uids_since(self, day: date) -> list[int]:
        uids = self._inner.uids_since(day)
        self._beat()
        return uids

    def fetch(self, uids: Sequence[int], *, max_size: int | None = None) -> Iterator[RawMessage]:
        for message in self._inner.fetch(uids, max_size=max_size):
            self._beat()
            yield message
