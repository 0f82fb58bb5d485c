"""`syncd ledger verify`: UIDs behind a folder's checkpoint that the ledger never saw are reported, and queued with --repair."""

from __future__ import annotations

from pathlib import Path

from syncd.config import load
from syncd.ledger import Checkpoint, State
from syncd.ledger.sqlite import SqliteLedger
from syncd.ledger.verify import uid_ranges, verify_mailbox
from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser
from tests.test_pipeline import OWN, config_file, mail, syncd  # noqa: F401 - config_file is a fixture


def _ledger(config: Path) -> SqliteLedger:
    return SqliteLedger(load(config).ledger.path)


def _skip_cursor_past(config: Path, imap_user: ImapUser, folder: str, last_uid: int) -> None:
    """What a buggy cursor does: the checkpoint moves past messages that were never handled."""
    with imap_user.client() as c:
        uidvalidity = c.select_folder(folder, readonly=True)[b"UIDVALIDITY"]
    led = _ledger(config)
    try:
        led.set_checkpoint("sales", folder, Checkpoint(uidvalidity, last_uid))
    finally:
        led.close()


def test_clean_ledger_verifies_with_exit_0(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """After a normal pass every UID behind the checkpoint is in the ledger: verify says ok and exits 0."""
    imap_user.append_many("INBOX", [bytes(mail("bob@example.com", OWN, f"m{i}", message_id=f"<v{i}@x>")) for i in range(3)])
    assert syncd("once", "-c", str(config_file)).returncode == 0
    done = syncd("ledger", "verify", "-c", str(config_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sales/INBOX" in done.stdout and "3 message(s) up to checkpoint uid 3, none missing" in done.stdout
    assert "0 message(s) never processed" in done.stdout


def test_skipped_messages_are_reported_then_repaired_and_delivered(config_file: Path, imap_user: ImapUser,
                                                                   crm_server: SandboxServer):
    """A checkpoint that jumped over unprocessed UIDs is caught (exit 1), --repair queues them, the next pass delivers each once."""
    imap_user.append_many("INBOX", [bytes(mail("bob@example.com", OWN, f"m{i}", message_id=f"<g{i}@x>")) for i in range(2)])
    assert syncd("once", "-c", str(config_file)).returncode == 0
    lost = imap_user.append_many("INBOX", [bytes(mail("bob@example.com", OWN, f"l{i}", message_id=f"<l{i}@x>")) for i in range(3)])
    after = imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "after", message_id="<after@x>")))
    _skip_cursor_past(config_file, imap_user, "INBOX", lost[-1])

    found = syncd("ledger", "verify", "--mailbox", "sales", "-c", str(config_file))
    assert found.returncode == 1
    assert f"3 never processed: uids {lost[0]}:{lost[-1]}" in found.stdout
    assert "3 message(s) never processed" in found.stdout

    repaired = syncd("ledger", "verify", "--repair", "-c", str(config_file))
    assert repaired.returncode == 0 and "queued for the next pass" in repaired.stdout
    listed = syncd("ledger", "list", "--state", "retry", "-c", str(config_file)).stdout
    assert listed.count("never processed") == 3

    assert syncd("once", "-c", str(config_file)).returncode == 0
    ids = [e.original_message_id for e in crm_server.received()]
    assert sorted(ids) == ["after@x", "g0@x", "g1@x", "l0@x", "l1@x", "l2@x"]
    clean = syncd("ledger", "verify", "-c", str(config_file))
    assert clean.returncode == 0 and f"checkpoint uid {after}, none missing" in clean.stdout


def test_every_folder_is_checked_and_a_missing_one_fails(config_file: Path, imap_user: ImapUser,
                                                         crm_server: SandboxServer):
    """Sent is checked next to INBOX; a configured folder that is gone makes verify exit 1 naming it."""
    sent = imap_user.append("Sent", bytes(mail(OWN, "bob@example.com", "out", message_id="<s1@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    _skip_cursor_past(config_file, imap_user, "Sent", sent + 1)
    imap_user.append("Sent", bytes(mail(OWN, "bob@example.com", "out2", message_id="<s2@x>")))
    found = syncd("ledger", "verify", "-c", str(config_file))
    assert found.returncode == 1 and "sales/Sent" in found.stdout and f"uids {sent + 1}" in found.stdout

    config_file.write_text(config_file.read_text().replace('poll_interval = 1', 'poll_interval = 1\nfolders = ["INBOX", "Gone"]'))
    gone = syncd("ledger", "verify", "--repair", "-c", str(config_file))
    assert gone.returncode == 1 and "FAIL  mailbox sales/Gone" in gone.stdout and "does not exist" in gone.stdout


def test_rows_under_an_old_uidvalidity_do_not_count(tmp_path: Path, imap_user: ImapUser):
    """A checkpoint from another UIDVALIDITY covers nothing (the next pass rescans), so nothing is reported missing."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "x")))
    led = SqliteLedger(tmp_path / "l.sqlite3")
    try:
        led.set_checkpoint(imap_user.settings().name, "INBOX", Checkpoint(1, 99))
        (check, _sent) = verify_mailbox(imap_user.settings(), led, repair=True)
        assert (check.folder, check.checkpoint, check.missing) == ("INBOX", 0, [])
        assert led.messages(states=[State.RETRY]) == []
    finally:
        led.close()


def test_uid_ranges_use_imap_notation():
    """UID lists print as IMAP sets: runs collapse to a:b."""
    assert uid_ranges([7, 1, 2, 3, 9, 10]) == "1:3,7,9:10"
    assert uid_ranges([]) == ""
