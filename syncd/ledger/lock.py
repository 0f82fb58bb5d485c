"""One syncing process per mailbox and ledger, held with a lock the kernel drops when its holder dies.

Two processes passing the same mailbox at once (``syncd once`` typed beside the running service,
or two units given one ``[ledger] path``) would each take the other's ``pending`` claims for
crashed sends and resend them: attachments uploaded twice, and only Zoho's DUPLICATE_DATA between
the CRM and a copy. ``flock`` rather than a row in the ledger: a SIGKILLed or power-cut holder
leaves no stale lock behind, so nothing ever needs breaking by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from syncd.errors import LedgerError, MailboxBusy


def lock_path(ledger: Path, mailbox: str) -> Path:
    """Beside the ledger, like SQLite's ``-wal`` and ``-shm`` files (mailbox names are file-name safe)."""
    return ledger.with_name(f"{ledger.name}-{mailbox}.lock")


@contextlib.contextmanager
def hold_mailbox(ledger: Path, mailbox: str) -> Iterator[None]:
    """Hold ``mailbox``'s lock for the block; raise ``MailboxBusy`` at once if another process has it."""
    path = lock_path(ledger, mailbox)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot create the lock {path}: {exc.strerror}; "
                          "check [ledger] path and its directory's permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MailboxBusy(
                f"mailbox {mailbox!r} is being synced by another syncd process ({_holder(fd)}) into the ledger "
                f"{ledger}: this pass is skipped; run one syncd per ledger (stop the service before a manual "
                "`syncd once`, or give each instance its own [ledger] path)"
            ) from None
        # Who holds it, for the other process's message; the content is never trusted for anything else.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: syncd {' '.join(sys.argv[1:])}"[:300].encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock; the file stays (unlinking it would race a waiting locker)


def _holder(fd: int) -> str:
    text = os.pread(fd, 300, 0).decode(errors="replace").strip()
    return text or "pid unknown"
