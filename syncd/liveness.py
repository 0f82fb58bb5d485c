"""Is every mailbox pass making progress? The daemon feeds systemd's watchdog only while it is.

A pass that is running but has not completed a single mail-source step (connect, list,
select, search, one fetched message) for longer than the watchdog interval is *stalled*:
a hung server or a deadlock. Idle mailboxes (between polls) are never stalled.

It also knows which running passes are inside a mail-source call right now (connect, a
FETCH, a LOGOUT): a pass blocked there has nothing half-done (IMAP is read with
``BODY.PEEK[]``, the CRM is not being written), so a stopping daemon need not wait for a
hung server's timeout: it waits only for the passes that are doing CRM or ledger work.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from typing import TypeVar

from syncd.settings import MailboxSettings
from syncd.source import Folder, MailSource, RawMessage, Selected

T = TypeVar("T")


class Liveness:
    """When each running pass last made progress; thread-safe (passes run on worker threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._changed = threading.Condition()
        self._running: dict[str, float] = {}
        self._reading: set[str] = set()
        """Mailboxes whose pass is inside a mail-source call."""

    def begin(self, mailbox: str) -> None:
        self.beat(mailbox)

    def beat(self, mailbox: str) -> None:
        with self._changed:
            self._running[mailbox] = self._clock()

    def end(self, mailbox: str) -> None:
        with self._changed:
            self._running.pop(mailbox, None)
            self._reading.discard(mailbox)
            self._changed.notify_all()

    @contextlib.contextmanager
    def reading(self, mailbox: str) -> Iterator[None]:
        """Marks the block as a mail-source call of ``mailbox``'s pass."""
        with self._changed:
            self._reading.add(mailbox)
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._reading.discard(mailbox)
                self._changed.notify_all()

    def settle(self, timeout: float | None = None, *, grace: float = 0.0) -> list[str] | None:
        """Wait until every running pass has ended or sits in a mail-source call; return the latter.

        Passes doing CRM or ledger work (a message in flight) are waited for; None if some still
        are after ``timeout`` seconds. Passes in a mail-source call get ``grace`` seconds to end by
        themselves: a healthy server answers the last FETCH or the LOGOUT in milliseconds, a hung one never.
        """
        grace_ends = time.monotonic() + grace
        with self._changed:
            while True:
                if not self._changed.wait_for(self._only_reading, timeout):
                    return None
                left = grace_ends - time.monotonic()
                if not self._running or left <= 0:
                    return sorted(self._running)
                # Wakes when the passes end, or when one leaves its source call with work to finish.
                self._changed.wait_for(lambda: not self._running or not self._only_reading(), left)

    def _only_reading(self) -> bool:
        return set(self._running) <= self._reading

    def stalled(self, limit: float) -> list[str]:
        """Mailboxes whose running pass has made no progress for more than ``limit`` seconds."""
        now = self._clock()
        with self._changed:
            return sorted(name for name, last in self._running.items() if now - last > limit)

    def watch(self, factory: Callable[[MailboxSettings], MailSource]) -> Callable[[MailboxSettings], MailSource]:
        """A source factory whose sources report each completed step as progress of their mailbox."""

        def open_watched(settings: MailboxSettings) -> MailSource:
            return _WatchedSource(factory(settings), self, settings.name)

        return open_watched


class _WatchedSource:
    """A MailSource that marks each call of the one it wraps as reading, and each completed step as progress."""

    def __init__(self, inner: MailSource, liveness: Liveness, mailbox: str):
        self._inner = inner
        self._liveness = liveness
        self._mailbox = mailbox

    def _step(self, call: Callable[[], T]) -> T:
        with self._liveness.reading(self._mailbox):
            result = call()
        self._liveness.beat(self._mailbox)
        return result

    def __enter__(self) -> _WatchedSource:
        self._step(self._inner.__enter__)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._liveness.reading(self._mailbox):
            self._inner.__exit__(*exc)

    def close(self) -> None:
        with self._liveness.reading(self._mailbox):
            self._inner.close()

    def folders(self) -> list[Folder]:
        return self._step(self._inner.folders)

    def select(self, folder: str) -> Selected:
        return self._step(lambda: self._inner.select(folder))

    def uids_after(self, last_uid: int) -> list[int]:
        return self._step(lambda: self._inner.uids_after(last_uid))

    def uids_since(self, day: date) -> list[int]:
        return self._step(lambda: self._inner.uids_since(day))

    def fetch(self, uids: Sequence[int], *, max_size: int | None = None) -> Iterator[RawMessage]:
        messages = iter(self._inner.fetch(uids, max_size=max_size))
        while True:
            # Only the wait for the next message is reading; the caller's work on it between yields is not.
            with self._liveness.reading(self._mailbox):
                message = next(messages, None)
            if message is None:
                return
            self._liveness.beat(self._mailbox)
            yield message
