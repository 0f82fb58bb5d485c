"""`syncd link` / `syncd unlink` against Dovecot and the sandbox's Link/Unlink Deal to Emails endpoints."""

from __future__ import annotations

from pathlib import Path

from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser
from tests.test_deals import seed_deals
from tests.test_pipeline import OWN, config_file, mail, syncd  # noqa: F401 - config_file is a fixture


def synced(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer, *mails: tuple[str, str]) -> None:
    """(sender, Message-ID) mails appended to INBOX and synced."""
    imap_user.append_many("INBOX", [bytes(mail(frm, OWN, f"About {mid}", message_id=f"<{mid}>")) for frm, mid in mails])
    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 0, done.stderr


def deal_of(crm_server: SandboxServer, original: str) -> str | None:
    (email,) = [e for e in crm_server.received() if e.original_message_id == original and e.module == "Contacts"]
    return (email.linked_record or {}).get("id")


def test_link_then_unlink_one_message(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """`syncd link ID --deal D` moves a predicted email to D in Zoho; `unlink` removes it; the ledger shows both."""
    bob = crm_server.contact_ids[0]
    predicted, other = seed_deals(crm_server, bob, ("Predicted", "Qualification", "2024-06-01T00:00:00Z"),
                                  ("Other", "Closed Won", "2024-01-01T00:00:00Z"))
    synced(config_file, imap_user, crm_server, ("bob@example.com", "m1@x"))
    assert deal_of(crm_server, "m1@x") == predicted

    linked = syncd("link", "<m1@x>", "--deal", other, "-c", str(config_file))
    assert linked.returncode == 0, linked.stderr
    assert f"m1@x on Contacts/{bob}: linked to deal {other}" in linked.stdout
    assert deal_of(crm_server, "m1@x") == other
    unlinked = syncd("unlink", "m1@x", "-c", str(config_file))
    assert unlinked.returncode == 0, unlinked.stderr
    assert deal_of(crm_server, "m1@x") is None
    assert crm_server.violations == []
    shown = syncd("ledger", "show", "m1@x", "-c", str(config_file)).stdout
    assert [line.split(":")[1].split()[0] for line in shown.splitlines() if line.startswith("      ")] == [
        "predicted", "link", "unlink"]


def test_link_by_ledger_selection_in_one_call_per_contact(config_file: Path, imap_user: ImapUser,
                                                          crm_server: SandboxServer):
    """`--contact` selects every email on that Contact; they are linked with one request and the owner is the token's user."""
    bob = crm_server.contact_ids[0]
    (target,) = seed_deals(crm_server, bob, ("Target", "Closed Won", "2024-01-01T00:00:00Z"))
    synced(config_file, imap_user, crm_server, ("bob@example.com", "a@x"), ("bob@example.com", "b@x"),
           ("lena@prospect.example", "lead@x"))
    before = len(crm_server.requests)
    done = syncd("link", "--contact", bob, "--deal", target, "-c", str(config_file))
    assert done.returncode == 0, done.stderr
    assert deal_of(crm_server, "a@x") == deal_of(crm_server, "b@x") == target
    posts = [p for m, p in crm_server.requests[before:] if m == "POST" and p.endswith("link_record")]
    assert posts == [f"/crm/v8/Contacts/{bob}/Emails/actions/link_record"]
    again = syncd("unlink", "--deal", target, "-c", str(config_file))
    assert again.returncode == 0 and again.stdout.count("unlinked from its deal") == 2


def test_unknown_or_lead_only_messages_are_reported(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """A Message-ID the ledger lacks, or one delivered only to a Lead, is named in the error and nothing is called."""
    (deal,) = seed_deals(crm_server, crm_server.contact_ids[0], ("D", "Qualification", "2024-01-01T00:00:00Z"))
    synced(config_file, imap_user, crm_server, ("lena@prospect.example", "lead@x"))
    before = len(crm_server.requests)
    done = syncd("link", "lead@x", "nobody@x", "--deal", deal, "-c", str(config_file))
    assert done.returncode == 1
    assert "lead@x: no email delivered to a Contact" in done.stderr and "nobody@x" in done.stderr
    assert not any("link_record" in p for _, p in crm_server.requests[before:])
    assert syncd("link", "--deal", deal, "-c", str(config_file)).returncode == 2  # nothing named: refuse to link everything


def test_refused_link_is_reported_and_not_recorded(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """Zoho refusing the link (a deal id that does not exist, then an INVALID_DATA answer) exits 1 and leaves the ledger as it was."""
    bob = crm_server.contact_ids[0]
    (deal,) = seed_deals(crm_server, bob, ("D", "Closed Won", "2024-01-01T00:00:00Z"))
    synced(config_file, imap_user, crm_server, ("bob@example.com", "r@x"))
    missing = syncd("link", "r@x", "--deal", "4876876999999999999", "-c", str(config_file))
    assert missing.returncode == 1 and "INVALID_DATA" in missing.stderr
    crm_server.inject(r"link_record$", method="POST", status=400,
                      body={"Emails": [{"code": "INVALID_DATA", "details": {"api_name": "message_id"},
                                        "message": "the message id given seems to be invalid", "status": "error"}]})
    refused = syncd("link", "r@x", "--deal", deal, "-c", str(config_file))
    assert refused.returncode == 1 and "FAIL  r@x" in refused.stdout and "INVALID_DATA" in refused.stdout
    assert deal_of(crm_server, "r@x") is None
    shown = syncd("ledger", "show", "r@x", "-c", str(config_file)).stdout
    assert ": link at" not in shown


def test_link_survives_a_transient_failure(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """A 503 on the link call is retried (linking is idempotent): the email ends up linked once."""
    bob = crm_server.contact_ids[0]
    (deal,) = seed_deals(crm_server, bob, ("D", "Closed Won", "2024-01-01T00:00:00Z"))
    synced(config_file, imap_user, crm_server, ("bob@example.com", "t@x"))
    crm_server.inject(r"link_record$", method="POST", status=503)
    done = syncd("link", "t@x", "--deal", deal, "-c", str(config_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert deal_of(crm_server, "t@x") == deal
