"""Retroactive association against Dovecot and the sandbox CRM: unmatched mail arrives once its record exists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncd.ledger import MessageKey, State
from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.sync import OWN, mail, syncer


def test_unmatched_mail_is_associated_once_the_lead_exists(tmp_path: Path, imap_user: ImapUser,
                                                           crm_server: SandboxServer):
    """A stranger's mail is unmatched; after a Lead with that address is created, the next pass associates it, once."""
    imap_user.append("INBOX", mail("new.person@later.example", OWN, message_id="<late@x>"))
    s = syncer(tmp_path, imap_user, crm_server, unmatched_recheck=0, cache_ttl=0)
    try:
        s.run()
        assert s.row("late@x").state == State.UNMATCHED
        (lead,) = crm_server.seed("Leads", [{"Last_Name": "Later", "Email": "New.Person@later.example"}])
        report = s.run()
        assert report.states == {State.DONE: 1}
        assert s.received() == {"late@x": [("Leads", lead)]}
        assert s.run().states == {}  # settled: not fetched again
    finally:
        s.close()


def test_addresses_without_records_are_not_asked_again_before_the_recheck_time(tmp_path: Path, imap_user: ImapUser,
                                                                                crm_server: SandboxServer):
    """Within unmatched_recheck, passes make no lookup for waiting addresses (the ledger's negative cache)."""
    imap_user.append_many("INBOX", [mail(f"p{i}@unknown.example", OWN, message_id=f"<n{i}@x>") for i in range(5)])
    s = syncer(tmp_path, imap_user, crm_server, unmatched_recheck=3600, cache_ttl=0)
    try:
        s.run()
        before = s.lookups()
        crm_server.seed("Leads", [{"Last_Name": "Zero", "Email": "p0@unknown.example"}])
        assert s.run().states == {}
        assert s.lookups() == before
    finally:
        s.close()


def test_recheck_is_batched_across_waiting_messages(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """Re-checking 30 waiting messages from 30 people costs one COQL query per module, not one search each."""
    imap_user.append_many("INBOX", [mail(f"q{i}@unknown.example", OWN, message_id=f"<q{i}@x>") for i in range(30)])
    s = syncer(tmp_path, imap_user, crm_server, unmatched_recheck=0, cache_ttl=0)
    try:
        s.run()
        crm_server.seed("Contacts", [{"Last_Name": "Seven", "Email": "q7@unknown.example"}])
        before = dict(s.app.crm.calls)
        assert s.run().states == {State.DONE: 1}
        spent = {k: v - before.get(k, 0) for k, v in s.app.crm.calls.items()}
    finally:
        s.close()
    # one recheck query per module (Contacts, Leads), then the message's own lookup (one per module)
    assert spent.get("coql") == 4 and spent.get("search", 0) == 0


def test_messages_older_than_the_window_are_not_rechecked(tmp_path: Path, imap_user: ImapUser,
                                                          crm_server: SandboxServer):
    """Past unmatched_window_days a waiting message is dropped from the recheck list, record or not."""
    imap_user.append("INBOX", mail("old@unknown.example", OWN, message_id="<old@x>"))
    s = syncer(tmp_path, imap_user, crm_server, unmatched_recheck=0, unmatched_window_days=1, cache_ttl=0)
    try:
        s.run()
        (row,) = s.app.ledger.messages(message_id="old@x")
        key = MessageKey(row.key.mailbox, "INBOX", row.key.uidvalidity, row.key.uid)
        # as if first seen two days ago
        s.app.ledger.clear_unmatched(key)
        old = (datetime.now(UTC) - timedelta(days=2)).isoformat(timespec="seconds")
        s.app.ledger._run("INSERT INTO unmatched VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (key.mailbox, key.folder, key.uidvalidity, key.uid, "old@unknown.example", old, old))
        crm_server.seed("Contacts", [{"Last_Name": "Old", "Email": "old@unknown.example"}])
        assert s.run().states == {}
        assert s.row("old@x").state == State.UNMATCHED
    finally:
        s.close()


def test_window_zero_turns_retroactive_association_off(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """With unmatched_window_days = 0 an unmatched message stays unmatched even after its record appears."""
    imap_user.append("INBOX", mail("off@unknown.example", OWN, message_id="<off@x>"))
    s = syncer(tmp_path, imap_user, crm_server, unmatched_recheck=0, unmatched_window_days=0, cache_ttl=0)
    try:
        s.run()
        crm_server.seed("Contacts", [{"Last_Name": "Off", "Email": "off@unknown.example"}])
        assert s.run().states == {}
        assert crm_server.received() == []
    finally:
        s.close()


def test_a_failing_recheck_does_not_stop_new_mail(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """If the CRM fails the re-check of waiting addresses, the pass still delivers new mail and re-checks next time."""
    imap_user.append("INBOX", mail("wait@unknown.example", OWN, message_id="<w@x>"))
    s = syncer(tmp_path, imap_user, crm_server, unmatched_recheck=0, cache_ttl=0)
    try:
        s.run()
        crm_server.seed("Contacts", [{"Last_Name": "Wait", "Email": "wait@unknown.example"}])
        imap_user.append("INBOX", mail("bob@example.com", OWN, message_id="<new@x>"))
        crm_server.inject(r"/coql", status=503, times=4)  # every try of the re-check's first query
        assert s.run().states == {State.DONE: 1}
        assert s.row("w@x").state == State.UNMATCHED
        assert s.run().states == {State.DONE: 1}
        assert sorted(s.received()) == ["new@x", "w@x"]
    finally:
        s.close()
