"""Test hook: crash this process at a named point, to prove that a crash there loses and duplicates nothing.

``SYNCD_TEST_KILL_AT=POINT:N`` makes the Nth crossing of ``POINT`` SIGKILL the process
(no cleanup, no flush: what a power cut or the OOM killer does). The fault tests in
``tests/faults/`` and ``bench/faults.py`` set it; nothing else should. Unset, ``reach`` is a
single comparison: the variable is read once, at import.

Points, in the order one delivery crosses them:

- ``claimed``: the delivery is durably ``pending`` in the ledger, nothing sent yet
- ``uploaded``: its files are in Zoho's file store, the email is not associated yet
- ``associated``: Zoho has stored the email, the ledger does not know yet
- ``recorded``: the message's verdict is in the ledger, the checkpoint not moved yet
- ``checkpoint``: inside the checkpoint's write transaction, before its commit
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "SYNCD_TEST_KILL_AT"
POINTS = ("claimed", "uploaded", "associated", "recorded", "checkpoint")


def _parse(spec: str) -> tuple[str, int] | None:
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    if point not in POINTS or not nth.isdigit() or int(nth) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected POINT:N with POINT one of {', '.join(POINTS)} and N >= 1")
    return point, int(nth)


_armed = _parse(os.environ.get(ENV, ""))
_crossed = 0
_lock = threading.Lock()


def reach(point: str) -> None:
    """Mark a crossing of ``point``; the armed crossing kills the process on the spot."""
    global _crossed
    if _armed is None or _armed[0] != point:
        return
    with _lock:
        _crossed += 1
        if _crossed == _armed[1]:
            os.kill(os.getpid(), signal.SIGKILL)
