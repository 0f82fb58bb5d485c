"""`syncd status`: per mailbox the last poll, lag, counts per state, last error and what to do, as text or JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncd.ledger import PollRow, State
from syncd.sandbox import SandboxServer
from syncd.settings import MailboxSettings
from syncd.status import collect
from tests.fixtures.dovecot import ImapUser
from tests.test_pipeline import OWN, config_file, mail, syncd  # noqa: F401 - config_file is a fixture


def status(config: Path, *args: str):
    return syncd("status", "-c", str(config), *args)


def test_never_polled_mailbox_needs_attention(config_file: Path):  # noqa: F811
    """Before any pass the mailbox shows as never polled, with what to do, and the exit code is 1."""
    done = status(config_file)
    assert done.returncode == 1
    assert "sales" in done.stdout and "never polled" in done.stdout and "syncd run" in done.stdout


def test_after_a_pass_counts_and_poll_time_show(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                                crm_server: SandboxServer):
    """After a pass: state ok, exit 0, the counts per state, and a last poll time in JSON."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "One", message_id="<s1@x>")))
    imap_user.append("INBOX", bytes(mail("nobody@nowhere.example", OWN, "Two", message_id="<s2@x>")))
    imap_user.append("INBOX", b"\x00 not mail")
    assert syncd("once", "-c", str(config_file)).returncode == 0
    text = status(config_file)
    assert text.returncode == 0  # a quarantined message gets advice, but the mailbox is healthy
    head, row = text.stdout.splitlines()[:2]
    assert head.split()[:4] == ["MAILBOX", "STATE", "LAST", "POLL"]
    assert row.split()[:2] == ["sales", "ok"]
    assert "syncd ledger list --state quarantined --mailbox sales" in text.stdout

    as_json = json.loads(status(config_file, "--json").stdout)["mailboxes"][0]
    assert as_json["mailbox"] == "sales" and as_json["state"] == "ok" and as_json["error_current"] is False
    assert as_json["counts"] == {"done": 1, "duplicate": 0, "unmatched": 1, "skipped": 0, "quarantined": 1,
                                 "retry": 0, "pending": 0}
    polled = datetime.fromisoformat(as_json["last_poll"])
    assert abs((datetime.now(UTC) - polled).total_seconds()) < 60 and as_json["lag_seconds"] < 60


def test_login_failure_shows_the_error_and_what_to_do(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                                      crm_server: SandboxServer):
    """A refused login makes the mailbox 'failing' with the error, advice on credentials, and no password shown."""
    assert syncd("once", "-c", str(config_file)).returncode == 0
    config_file.write_text(config_file.read_text().replace(imap_user.password, "wrong-password-123"))
    assert syncd("once", "-c", str(config_file)).returncode == 1
    text = status(config_file)
    assert text.returncode == 1 and "failing" in text.stdout
    assert "login refused" in text.stdout and "username and password" in text.stdout
    entry = json.loads(status(config_file, "--json").stdout)["mailboxes"][0]
    assert entry["error_kind"] == "SourceAuthError" and entry["error_current"] is True
    assert "wrong-password-123" not in text.stdout + json.dumps(entry)

    config_file.write_text(config_file.read_text().replace("wrong-password-123", imap_user.password))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    entry = json.loads(status(config_file, "--json").stdout)["mailboxes"][0]
    assert entry["state"] == "ok" and entry["error_current"] is False and "login refused" in entry["last_error"]


def test_late_when_no_good_pass_for_three_intervals():
    """A mailbox whose last good pass is older than three poll intervals plus a minute is late, with advice."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    mailbox = MailboxSettings(name="m", poll_interval=60)

    def at(minutes_ago: float):
        t = now - timedelta(minutes=minutes_ago)
        (st,) = collect([mailbox], {"m": PollRow("m", t, t, "", "", None)}, {("m", State.DONE): 3}, now)
        return st

    assert at(3.9).state == "ok" and at(3.9).lag == 234
    late = at(4.1)
    assert late.state == "late" and "daemon running" in late.advice[0]
    assert late.as_json()["counts"]["done"] == 3


def test_status_needs_no_secrets(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):  # noqa: F811
    """From a shell without the daemon's credentials, status still reads the ledger (other commands refuse)."""
    assert syncd("once", "-c", str(config_file)).returncode == 0
    text = config_file.read_text().replace('client_secret_file = "secret"', 'client_secret_file = "/nonexistent/secret"')
    config_file.write_text(text.replace(f'password = "{imap_user.password}"', 'password_file = "/nonexistent/pw"'))
    assert syncd("once", "-c", str(config_file)).returncode == 2
    done = status(config_file)
    assert done.returncode == 0 and done.stdout.splitlines()[1].split()[:2] == ["sales", "ok"]
