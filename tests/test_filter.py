"""Skip rules against Dovecot and the sandbox CRM: each rule skips with its reason, and each switch turns it off."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from syncd.ledger import State
from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.sync import OWN, mail, sync, syncer  # noqa: F401 - sync is a fixture


DATA = Path(__file__).parent / "data" / "mail"


RULES = [
    # (message id, extra headers or raw bytes, switch, reason fragment)
    ("as@x", {"Auto_Submitted": "auto-replied"}, "skip_auto_replies", "auto-reply (Auto-Submitted: auto-replied)"),
    ("xa@x", {"X_Autoreply": "yes"}, "skip_auto_replies", "auto-reply (X-Autoreply)"),
    ("pa@x", {"Precedence": "auto_reply"}, "skip_auto_replies", "auto-reply (Precedence: auto_reply)"),
    ("rep@x", (DATA / "bounce-report.eml").read_bytes(), "skip_bounces", "bounce (multipart/report)"),
    ("md@x", mail("MAILER-DAEMON@example.com", OWN, message_id="<md@x>"), "skip_bounces", "bounce (from MAILER-DAEMON@"),
    ("li@x", {"List_Id": "<news.example.com>"}, "skip_lists", "list mail (List-Id)"),
    ("pb@x", {"Precedence": "bulk"}, "skip_lists", "list mail (Precedence: bulk)"),
    ("pl@x", {"Precedence": "list"}, "skip_lists", "list mail (Precedence: list)"),
]


@pytest.mark.parametrize(("message_id", "shape", "switch", "reason"), RULES, ids=[r[0] for r in RULES])
def test_rule_skips_by_default_and_its_switch_turns_it_off(sync, imap_user: ImapUser, crm_server: SandboxServer,
                                                           message_id, shape, switch, reason):
    """Auto-replies, bounces and list mail are skipped with their reason; switched off, the same message is associated."""
    data = shape if isinstance(shape, bytes) else mail("bob@example.com", OWN, message_id=f"<{message_id}>", **shape)
    if b"MAILER-DAEMON" in data:
        crm_server.seed("Contacts", [{"Last_Name": "Daemon", "Email": "mailer-daemon@example.com"}])
    imap_user.append("INBOX", data)
    on = sync()
    on.run()
    row = on.row(message_id)
    assert row.state == State.SKIPPED and reason in row.reason
    assert crm_server.received() == []

    off = sync(**{switch: False})
    off.app.ledger.retry(states=[State.SKIPPED])
    off.run()
    assert off.row(message_id).state == State.DONE
    assert [e.original_message_id for e in crm_server.received()] == [message_id]


def test_internal_only_mail_is_skipped_with_org_domains(sync, imap_user: ImapUser, crm_server: SandboxServer):
    """Mail among colleagues of the org's domains (subdomains too) is skipped; one outside participant makes it count."""
    crm_server.seed("Contacts", [{"Last_Name": "Colleague", "Email": "pat@ourco.example"}])
    imap_user.append("INBOX", mail("pat@ourco.example", OWN, message_id="<in1@x>", Cc="ops@eu.ourco.example"))
    imap_user.append("INBOX", mail("pat@ourco.example", OWN, message_id="<in2@x>", Cc="bob@example.com"))
    s = sync(internal_domains=("ourco.example",))
    s.run()
    row = s.row("in1@x")
    assert row.state == State.SKIPPED and "internal" in row.reason and "ourco.example" in row.reason
    assert s.row("in2@x").state == State.DONE


def test_blocked_addresses_and_domains_never_count(sync, imap_user: ImapUser, crm_server: SandboxServer):
    """A blocked sender's mail is skipped naming it; sent mail to a blocked and an allowed person reaches only the allowed."""
    crm_server.seed("Contacts", [{"Last_Name": "Noreply", "Email": "noreply@shop.example"},
                                 {"Last_Name": "Sub", "Email": "x@mail.spam.example"}])
    imap_user.append("INBOX", mail("noreply@shop.example", OWN, message_id="<bl1@x>"))
    imap_user.append("INBOX", mail("x@mail.spam.example", OWN, message_id="<bl2@x>"))
    imap_user.append("Sent", mail(OWN, "Noreply@Shop.example", message_id="<bl3@x>", Cc="bob@example.com"))
    s = sync(block_addresses=("noreply@shop.example",), block_domains=("spam.example",))
    s.run()
    assert s.row("bl1@x").state == State.SKIPPED and s.row("bl1@x").reason == "blocked: noreply@shop.example"
    assert s.row("bl2@x").state == State.SKIPPED and "x@mail.spam.example" in s.row("bl2@x").reason
    assert s.received() == {"bl3@x": [("Contacts", crm_server.contact_ids[0])]}


def test_drafts_are_never_imported(sync, imap_user: ImapUser, crm_server: SandboxServer):
    """A \\Draft-flagged message in INBOX and anything in the \\Drafts special-use folder are skipped as drafts."""
    imap_user.append("INBOX", mail("bob@example.com", OWN, message_id="<df1@x>"), flags=["\\Draft"])
    imap_user.append("Drafts", mail(OWN, "bob@example.com", message_id="<df2@x>"))
    imap_user.append("INBOX", mail("bob@example.com", OWN, message_id="<df3@x>"), flags=["\\Seen"])
    s = sync(folders=("INBOX", "Drafts"))
    s.run()
    assert "\\Draft flag" in s.row("df1@x").reason and s.row("df1@x").state == State.SKIPPED
    (row,) = [r for r in s.app.ledger.messages() if r.key.folder == "Drafts"]
    assert row.state == State.SKIPPED and "Drafts folder" in row.reason
    assert list(s.received()) == ["df3@x"]


def test_maildir_draft_flag_is_skipped(tmp_path: Path, crm_server: SandboxServer):
    """A Maildir message with the D flag in its name, or in the .Drafts folder, is a draft and is skipped."""
    from syncd.app import App
    from syncd.settings import LedgerSettings, MailboxSettings, Settings
    from tests.fixtures.crm import settings_for

    box = mailbox.Maildir(tmp_path / "Maildir")
    draft = mailbox.MaildirMessage(mail("bob@example.com", OWN, message_id="<md1@x>"))
    draft.set_flags("D")
    box.add(draft)
    box.add(mailbox.MaildirMessage(mail("bob@example.com", OWN, message_id="<md2@x>")))
    box.add_folder("Drafts").add(mailbox.MaildirMessage(mail(OWN, "bob@example.com", message_id="<md3@x>")))
    maildir = MailboxSettings(name="md", maildir=tmp_path / "Maildir", addresses=(OWN,), folders=("INBOX", "Drafts"))
    settings = Settings(crm=settings_for(crm_server), ledger=LedgerSettings(tmp_path / "l.sqlite3"), mailboxes=(maildir,))
    app = App(settings)
    try:
        app.once()
        (row,) = app.ledger.messages(message_id="md1@x")
        (in_drafts,) = app.ledger.messages(message_id="md3@x")
    finally:
        app.close()
    assert row.state == State.SKIPPED and "draft" in row.reason
    assert in_drafts.state == State.SKIPPED and "Drafts folder" in in_drafts.reason
    assert [e.original_message_id for e in crm_server.received()] == ["md2@x"]
