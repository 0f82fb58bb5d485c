"""The SQLite ledger: durable claims, checkpoints, operator actions, refusal of bad files."""

from __future__ import annotations

import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from syncd.errors import LedgerError
from syncd.ledger import Checkpoint, Claim, DeliveryKey, MessageKey, State
from syncd.ledger.sqlite import SCHEMA_VERSION, SqliteLedger

KEY = DeliveryKey("abc@example.com", "Contacts", "1001")


@pytest.fixture
def ledger(tmp_path: Path):
    led = SqliteLedger(tmp_path / "state" / "ledger.sqlite3")
    yield led
    led.close()


def test_file_is_private_and_in_wal_mode(ledger: SqliteLedger):
    """The ledger file is created 0600 and journals in WAL with synchronous=FULL."""
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_claim_then_finish_makes_it_final(ledger: SqliteLedger):
    """A claimed and finished delivery is FINAL for every later claim, with Zoho's id kept."""
    assert ledger.claim(KEY, mailbox="m")[0] is Claim.NEW
    ledger.finish(KEY, State.DONE, zoho_message_id="z1")
    claim, row = ledger.claim(KEY, mailbox="m")
    assert claim is Claim.FINAL and row.state is State.DONE and row.zoho_message_id == "z1"


def test_unfinished_claim_survives_a_restart_as_resend(tmp_path: Path):
    """A claim never finished (crash) is a RESEND after reopening: the outcome is unknown."""
    path = tmp_path / "l.sqlite3"
    first = SqliteLedger(path)
    first.claim(KEY, mailbox="m")
    first._db.close()  # no finish, no clean close: what a kill -9 leaves
    again = SqliteLedger(path)
    claim, row = again.claim(KEY, mailbox="m")
    assert claim is Claim.RESEND and row.state is State.PENDING and row.attempts == 1
    again.close()


def test_concurrent_claims_give_one_winner(ledger: SqliteLedger):
    """Two threads claiming one delivery at once: exactly one may send, the other is BUSY."""
    results: list[Claim] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(ledger.claim(KEY, mailbox="m")[0])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(Claim.NEW) == 1 and results.count(Claim.BUSY) == 7


def test_checkpoint_roundtrip(ledger: SqliteLedger):
    """A folder's checkpoint is stored per mailbox and folder and replaced on update."""
    assert ledger.checkpoint("m", "INBOX") is None
    ledger.set_checkpoint("m", "INBOX", Checkpoint(7, 10))
    ledger.set_checkpoint("m", "INBOX", Checkpoint(7, 12))
    assert ledger.checkpoint("m", "INBOX") == Checkpoint(7, 12)
    assert ledger.checkpoint("m", "Sent") is None


def test_message_rows_and_due_retries(ledger: SqliteLedger):
    """Message rows count attempts; due() lists RETRY rows whose time has come."""
    now = datetime.now(UTC)
    ledger.record_message(MessageKey("m", "INBOX", 7, 1), message_id="a", state=State.DONE)
    ledger.record_message(MessageKey("m", "INBOX", 7, 2), message_id="b", state=State.RETRY, retry_at=now - timedelta(seconds=1))
    ledger.record_message(MessageKey("m", "INBOX", 7, 3), message_id="c", state=State.RETRY, retry_at=now + timedelta(hours=1))
    ledger.record_message(MessageKey("m", "INBOX", 7, 2), message_id="b", state=State.RETRY, retry_at=now - timedelta(seconds=1))
    assert ledger.due("m", "INBOX", 7, now) == [2]
    rows = ledger.message_states("m", "INBOX", 7, [1, 2, 3, 4])
    assert set(rows) == {1, 2, 3} and rows[2].attempts == 2
    assert ledger.counts() == {("m", State.DONE): 1, ("m", State.RETRY): 2}


def test_retry_requeues_quarantined_messages_and_deliveries(ledger: SqliteLedger):
    """`ledger retry` makes a quarantined message due now and lets its refused delivery be claimed again."""
    ledger.record_message(MessageKey("m", "INBOX", 7, 5), message_id=KEY.message_id, state=State.QUARANTINED, reason="x")
    ledger.claim(KEY, mailbox="m")
    ledger.finish(KEY, State.QUARANTINED, reason="INVALID_DATA")
    assert ledger.claim(KEY, mailbox="m")[0] is Claim.FINAL
    assert ledger.retry(states=[State.QUARANTINED]) == 1
    assert ledger.due("m", "INBOX", 7, datetime.now(UTC)) == [5]
    assert ledger.claim(KEY, mailbox="m")[0] is Claim.NEW


def test_forget_drops_deliveries_and_requeues(ledger: SqliteLedger):
    """`ledger forget` removes a message's deliveries so it is sent again on the next pass."""
    ledger.record_message(MessageKey("m", "INBOX", 7, 5), message_id=KEY.message_id, state=State.DONE)
    ledger.claim(KEY, mailbox="m")
    ledger.finish(KEY, State.DONE, zoho_message_id="z")
    assert ledger.forget(KEY.message_id) == 1
    assert ledger.deliveries(KEY.message_id) == []
    assert ledger.messages(message_id=KEY.message_id)[0].state is State.RETRY


def test_corrupt_file_refused_with_the_fix(tmp_path: Path):
    """A file that is not SQLite is refused, and the message says what to do."""
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(LedgerError, match="corrupt.*restore a backup"):
        SqliteLedger(path)


def test_newer_schema_refused(tmp_path: Path):
    """A ledger written by a newer syncd is refused rather than misread."""
    path = tmp_path / "ledger.sqlite3"
    led = SqliteLedger(path)
    led._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    led.close()
    with pytest.raises(LedgerError, match="upgrade syncd"):
        SqliteLedger(path)


def test_unwritable_directory_is_a_clear_error(tmp_path: Path):
    """A ledger path under a file (not a directory) gives a LedgerError naming the setting."""
    (tmp_path / "file").write_text("")
    with pytest.raises(LedgerError, match=r"\[ledger\] path"):
        SqliteLedger(tmp_path / "file" / "ledger.sqlite3")


def test_version_1_file_is_migrated_keeping_its_rows(tmp_path: Path):
    """A ledger written by schema 1 opens as the current schema with its deliveries intact and deal columns added."""
    import sqlite3

    from syncd.ledger.sqlite import _SCHEMA

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO deliveries VALUES (?, ?, ?, 'done', 'z9', '', 1, 'm', '2024-01-01T00:00:00+00:00')",
               (KEY.message_id, KEY.module, KEY.record_id))
    db.commit()
    db.close()
    led = SqliteLedger(path)
    assert led._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    (row,) = led.linkable(module=KEY.module)
    assert (row.key, row.zoho_message_id, row.deal_id) == (KEY, "z9", None)
    led.record_deal(KEY, "link", "d1", "Big deal")
    assert led.linkable(module=KEY.module, deal_id="d1")[0].deal_name == "Big deal"
    led.close()


def test_deal_changes_are_kept_in_order(ledger: SqliteLedger):
    """Each link and unlink of a delivered email is recorded, and the delivery shows the current deal."""
    ledger.claim(KEY, mailbox="m")
    ledger.finish(KEY, State.DONE, zoho_message_id="z")
    ledger.record_deal(KEY, "predicted", "d1", "First")
    ledger.record_deal(KEY, "unlink", None)
    ledger.record_deal(KEY, "link", "d2", "Second")
    assert [(h.action, h.deal_id) for h in ledger.deal_history(KEY.message_id)] == [
        ("predicted", "d1"), ("unlink", None), ("link", "d2")]
    assert ledger.linkable(module="Contacts", deal_id="d1") == []
    assert [r.key for r in ledger.linkable(module="Contacts", message_ids=[KEY.message_id])] == [KEY]
