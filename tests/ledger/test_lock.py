"""The mailbox lock: one syncing process per mailbox and ledger, released however its holder ends."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest

from syncd.errors import LedgerError, MailboxBusy
from syncd.ledger.lock import hold_mailbox, lock_path


def test_second_process_is_refused_with_the_holder_named(tmp_path: Path, lock_holder):
    """While another process holds a mailbox, taking it fails at once with MailboxBusy naming that process's pid."""
    ledger = tmp_path / "ledger.sqlite3"
    holder = lock_holder(ledger, "sales")
    with pytest.raises(MailboxBusy, match=rf"pid {holder.pid}: syncd .*ledger.sqlite3 sales.*run one syncd per ledger"):
        with hold_mailbox(ledger, "sales"):
            pass


def test_lock_is_released_when_the_holder_ends_or_is_killed(tmp_path: Path, lock_holder):
    """A holder that exits normally or is SIGKILLed leaves no stale lock: the mailbox can be taken right after."""
    ledger = tmp_path / "ledger.sqlite3"
    clean = lock_holder(ledger, "sales")
    clean.stdin.close()
    assert clean.wait(timeout=20) == 0
    with hold_mailbox(ledger, "sales"):
        pass
    killed = lock_holder(ledger, "sales")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=20)
    with hold_mailbox(ledger, "sales"):
        pass


def test_other_mailboxes_and_ledgers_are_not_blocked(tmp_path: Path, lock_holder):
    """The lock is per mailbox and per ledger: another mailbox, or the same name on another ledger, goes ahead."""
    ledger = tmp_path / "ledger.sqlite3"
    lock_holder(ledger, "sales")
    with hold_mailbox(ledger, "support"):
        pass
    (tmp_path / "other").mkdir()
    with hold_mailbox(tmp_path / "other" / "ledger.sqlite3", "sales"):
        pass


def test_two_holders_in_one_process_exclude_each_other(tmp_path: Path):
    """Two passes of one mailbox inside one process are refused too (flock is per open file, not per process)."""
    ledger = tmp_path / "ledger.sqlite3"
    with hold_mailbox(ledger, "sales"):
        with pytest.raises(MailboxBusy):
            with hold_mailbox(ledger, "sales"):
                pass
    with hold_mailbox(ledger, "sales"):
        pass


def test_lock_file_is_private_and_beside_the_ledger(tmp_path: Path):
    """The lock file sits next to the ledger, mode 0600, like the ledger itself."""
    ledger = tmp_path / "ledger.sqlite3"
    with hold_mailbox(ledger, "sales"):
        path = lock_path(ledger, "sales")
        assert path == tmp_path / "ledger.sqlite3-sales.lock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unwritable_directory_is_a_clear_ledger_error(tmp_path: Path):
    """A directory the lock cannot be created in is a LedgerError naming the file and the fix."""
    ledger = tmp_path / "missing" / "ledger.sqlite3"
    with pytest.raises(LedgerError, match=r"cannot create the lock .*ledger.sqlite3-sales.lock.*\[ledger\] path"):
        with hold_mailbox(ledger, "sales"):
            pass
