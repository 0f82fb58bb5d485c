"""Mailbox owners: `owner` sent only for another user's mail, NO_PERMISSION said plainly, nothing lost."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.sandbox import SandboxServer
from tests.fixtures.crm import CONTACTS, LEADS
from tests.fixtures.dovecot import ImapUser
from tests.test_pipeline import OWN, config_file, mail, syncd  # noqa: F401 - config_file is a fixture

PATRICIA = "4876876000000424690"
"""The sandbox's second user (not the token's)."""


@pytest.fixture
def crm_server(request) -> Iterator[SandboxServer]:
    """The seeded sandbox; ``admin`` False (via indirect parametrisation) makes the token's user a non-admin."""
    with SandboxServer(admin=getattr(request, "param", True)) as server:
        server.contact_ids = server.seed("Contacts", CONTACTS)  # type: ignore[attr-defined]
        server.lead_ids = server.seed("Leads", LEADS)  # type: ignore[attr-defined]
        yield server


def with_owner(config_file: Path, line: str) -> None:
    config_file.write_text(config_file.read_text() + line + "\n")


def test_own_mail_carries_no_owner(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """owner_email naming the token's own user sends no `owner` key (Zoho files it under the caller anyway)."""
    with_owner(config_file, 'owner_email = "ADMIN@sandbox.example"')
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Mine", message_id="<own@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (email,) = crm_server.received()
    assert "owner" not in email.payload


def test_other_users_mail_carries_their_id(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """owner_email of another user is looked up once and sent as owner.id on every email (admin token)."""
    with_owner(config_file, 'owner_email = "patricia@sandbox.example"')
    imap_user.append_many("INBOX", [bytes(mail("bob@example.com", OWN, f"Hers {i}", message_id=f"<h{i}@x>"))
                                    for i in range(3)])
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert [e.payload["owner"] for e in crm_server.received()] == [{"id": PATRICIA}] * 3
    assert sum(p.endswith("/users") for _, p in crm_server.requests) == 2  # the token's user, then the active users
    assert crm_server.violations == []


@pytest.mark.parametrize("crm_server", [False], indirect=True)
def test_no_permission_is_explained_and_nothing_is_lost(config_file: Path, imap_user: ImapUser,
                                                        crm_server: SandboxServer):
    """A non-admin token filing another user's mail: clear error, mail kept for retry, delivered once the owner is removed."""
    text = config_file.read_text()
    with_owner(config_file, f'owner_id = "{PATRICIA}"')
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hers", message_id="<np@x>")))
    refused = syncd("once", "-c", str(config_file))
    assert refused.returncode == 1 and crm_server.received() == []
    assert "only an administrator may associate another user's mail" in refused.stdout
    assert "remove owner_id/owner_email from mailbox sales" in refused.stdout
    assert "retry" in (shown := syncd("ledger", "show", "np@x", "-c", str(config_file)).stdout) and "NO_PERMISSION" in shown

    config_file.write_text(text)
    assert syncd("ledger", "retry", "np@x", "-c", str(config_file)).returncode == 0  # due now, not after the backoff
    again = syncd("once", "-c", str(config_file))
    assert again.returncode == 0, again.stdout + again.stderr
    assert [e.original_message_id for e in crm_server.received()] == ["np@x"]


def test_unknown_owner_sends_nothing(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """An owner_email that is no active user stops that mailbox's deliveries with a message naming the setting."""
    with_owner(config_file, 'owner_email = "ghost@sandbox.example"')
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Ghost", message_id="<g@x>")))
    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 1 and crm_server.received() == []
    assert "owner_email ghost@sandbox.example is not an active Zoho CRM user" in done.stdout


def test_owner_id_and_email_together_are_refused(config_file: Path):
    """Setting both owner_id and owner_email is a configuration error (exit 2) naming the key."""
    with_owner(config_file, f'owner_id = "{PATRICIA}"\nowner_email = "patricia@sandbox.example"')
    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 2 and "mailbox[0].owner_email: owner_id and owner_email are both set" in done.stderr


@pytest.mark.parametrize("crm_server", [True, False], indirect=True)
def test_check_says_whether_the_owner_will_be_accepted(config_file: Path, crm_server: SandboxServer):
    """`syncd check` names the mailbox's owner: ok with an admin token, FAIL (NO_PERMISSION ahead) without."""
    with_owner(config_file, 'owner_email = "patricia@sandbox.example"')
    done = syncd("check", "-c", str(config_file))
    if crm_server.org.admin:
        assert done.returncode == 0, done.stdout
        assert re.search(r"ok\s+owner of mailbox sales: mail filed as patricia@sandbox.example", done.stdout)
    else:
        assert done.returncode == 1
        assert re.search(r"FAIL\s+owner of mailbox sales: .*no administrator: Zoho will answer NO_PERMISSION", done.stdout)
