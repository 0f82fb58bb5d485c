"""`uids_since` (the backfill window) on every source: IMAP SEARCH SINCE and the local Maildir's delivery dates."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from syncd.settings import MailboxSettings
from syncd.source import open_source
from tests.fixtures.dovecot import ImapUser
from tests.source.test_contract import message
from tests.source.test_local import make_maildir


def test_imap_since_uses_the_internal_date(imap_user: ImapUser):
    """Only messages whose INTERNALDATE is on or after the day are in the window, whatever their UID order."""
    first = imap_user.append("INBOX", message(1), internaldate=datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    imap_user.append("INBOX", message(2), internaldate=datetime(2025, 12, 31, 9, 0, tzinfo=UTC))
    third = imap_user.append("INBOX", message(3), internaldate=datetime(2026, 1, 1, 9, 0, tzinfo=UTC))
    with open_source(imap_user.settings()) as source:
        source.select("INBOX")
        assert source.uids_since(date(2026, 1, 1)) == [first, third]


def test_maildir_since_uses_the_delivery_time(tmp_path: Path):
    """A Maildir message's delivery time (its file name's timestamp) decides whether it is in the window."""
    root = make_maildir(tmp_path / "md")
    (root / "cur" / "1767225600.M1P1.host:2,S").write_bytes(message(1))  # 2026-01-01 00:00 UTC
    (root / "cur" / "1767139200.M1P1.host:2,S").write_bytes(message(2))  # 2025-12-31 00:00 UTC
    with open_source(MailboxSettings(name="md", maildir=root)) as source:
        source.select("INBOX")
        assert source.uids_since(date(2026, 1, 1)) == [2]
