"""Slowing down on Zoho's 429: one gate shared by every thread of a client.

A rate limit is the org's, not one request's, so after a 429 every caller waits before
its next request: as long as Retry-After says when Zoho sends one (it usually does not; at
most MAX_RETRY_AFTER, so a shutdown never waits longer), else 1, 2, 4 ... up to 30 seconds
(jittered) for each 429 in a row. The refused message itself waits the whole Retry-After
(its retry time in the ledger).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("syncd.crm")

MAX_PAUSE = 30.0
MAX_RETRY_AFTER = 60.0


class RateGate:
    """Closed for a while after each 429; ``wait`` blocks until it opens again."""

    def __init__(self, *, sleep: Callable[[float], None], clock: Callable[[], float] = time.monotonic):
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._open_at = 0.0
        self._strikes = 0

    def wait(self) -> None:
        with self._lock:
            delay = self._open_at - self._clock()
        if delay > 0:
            self._sleep(delay)

    def limited(self, retry_after: float | None) -> float:
        """Zoho answered 429: close the gate; returns the pause chosen."""
        with self._lock:
            self._strikes += 1
            if retry_after is not None:
                pause = min(retry_after, MAX_RETRY_AFTER)
            else:
                ceiling = min(MAX_PAUSE, 2.0 ** (self._strikes - 1))
                pause = random.uniform(ceiling / 2, ceiling)
            self._open_at = max(self._open_at, self._clock() + pause)
        log.warning("crm_rate_limited", pause=round(pause, 2), in_a_row=self._strikes)
        return pause

    def passed(self) -> None:
        """Any other answer: the next 429 starts again from the shortest pause."""
        with self._lock:
            self._strikes = 0
