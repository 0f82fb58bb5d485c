"""Backfill: `syncd once --since DATE` imports the mail received since DATE, resumes after a crash, shows progress."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from syncd.ledger.sqlite import SqliteLedger
from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser
from tests.test_pipeline import OWN, config_file, mail, syncd  # noqa: F401 - config_file is a fixture

OLD = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NEW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def fill(user: ImapUser, old: int, new: int) -> None:
    """``old`` messages received before 2026 and ``new`` ones after, interleaved by UID."""
    for i in range(max(old, new)):
        if i < old:
            user.append("INBOX", bytes(mail("bob@example.com", OWN, f"old {i}", message_id=f"<old{i}@x>")), internaldate=OLD)
        if i < new:
            user.append("INBOX", bytes(mail("bob@example.com", OWN, f"new {i}", message_id=f"<new{i}@x>")), internaldate=NEW)


def received(server: SandboxServer) -> list[str]:
    return sorted(e.original_message_id for e in server.received())


def test_since_imports_only_recent_mail_and_the_rest_can_follow(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                                                 crm_server: SandboxServer):
    """Mail before --since is recorded as skipped, unfetched; later passes skip it; `ledger retry` brings it in."""
    fill(imap_user, old=2, new=3)
    done = syncd("once", "--since", "2026-01-01", "-c", str(config_file))
    assert done.returncode == 0, done.stderr
    assert received(crm_server) == ["new0@x", "new1@x", "new2@x"]
    listed = syncd("ledger", "list", "--state", "skipped", "-c", str(config_file)).stdout
    assert listed.count("before the backfill's --since 2026-01-01") == 2

    assert "nothing new" in syncd("once", "-c", str(config_file)).stdout  # the checkpoint moved past the old mail
    assert syncd("ledger", "retry", "--state", "skipped", "-c", str(config_file)).returncode == 0
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert received(crm_server) == ["new0@x", "new1@x", "new2@x", "old0@x", "old1@x"]


def test_interrupted_backfill_resumes_without_duplicates(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                                         crm_server: SandboxServer):
    """Killed after its third message, the same command run again delivers the rest, each message once."""
    fill(imap_user, old=3, new=6)
    killed = syncd("once", "--since", "2026-01-01", "-c", str(config_file), env={"SYNCD_TEST_KILL_AT": "recorded:3"})
    assert killed.returncode == -9
    assert len(crm_server.received()) == 3
    again = syncd("once", "--since", "2026-01-01", "-c", str(config_file))
    assert again.returncode == 0, again.stderr
    assert received(crm_server) == [f"new{i}@x" for i in range(6)]
    ledger = SqliteLedger(config_file.parent / "ledger.sqlite3")
    try:
        checkpoint = ledger.checkpoint("sales", "INBOX")
    finally:
        ledger.close()
    assert checkpoint is not None and checkpoint.last_uid == 9


def test_progress_is_logged_when_not_on_a_terminal(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                                   crm_server: SandboxServer):
    """Without a terminal, progress comes as log events, the last one with every message done and no time left."""
    fill(imap_user, old=1, new=3)
    done = syncd("--log-format", "json", "once", "--since", "2026-01-01", "-c", str(config_file))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 3 and progress[-1]["eta_seconds"] == 0
    window = next(e for e in events if e["event"] == "backfill_window")
    assert window["left_out"] == 1 and window["inside"] == 3


def test_progress_bar_with_eta_on_a_terminal(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                             crm_server: SandboxServer):
    """On a terminal stderr shows a redrawn bar with counts, rate and ETA, ending at 100%."""
    fill(imap_user, old=0, new=3)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "--log-level", "warning", "once", "--since", "2026-01-01",
                             "-c", str(config_file)], stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    shown = b""
    try:
        while True:  # read until the process closes its end (EOF or EIO on Linux)
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    text = shown.decode()
    assert "\r" in text and "ETA" in text and "msg/s" in text
    assert "3/3 100%" in text and "sales/INBOX" in text
