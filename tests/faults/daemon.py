"""Helpers for fault tests that drive `syncd run` as a real subprocess and read its ledger from outside."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from syncd.ledger import FINAL
from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import Dovecot, ImapUser

def new_user(dovecot: Dovecot) -> ImapUser:
    """Another fresh mailbox on the session's Dovecot (tests with several mailboxes)."""
    user = ImapUser(dovecot, f"u{secrets.token_hex(4)}", secrets.token_urlsafe(12))
    dovecot.add_user(user.username, user.password)
    return user


def write_config(path: Path, crm: SandboxServer, users: dict[str, ImapUser], *, timeout: float = 5,
                 extra: str = "", refresh_token_file: Path | None = None) -> Path:
    """A syncd.toml with one mailbox per user (named by the keys), polling every second; ``extra`` joins each mailbox.

    ``refresh_token_file``: the CRM refresh token is written there and read from there (``refresh_token_file``).
    """
    client_id, client_secret, refresh_token = crm.credentials()
    token_line = f'refresh_token = "{refresh_token}"'
    if refresh_token_file is not None:
        refresh_token_file.write_text(refresh_token + "\n")
        token_line = f'refresh_token_file = "{refresh_token_file}"'
    def table(name: str, u: ImapUser) -> str:
        keys = {"name": name, "host": u.host, "port": u.port, "security": "none", "username": u.username,
                "password": u.password, "addresses": ["me@ourco.example"], "poll_interval": 1, "timeout": 5}
        return "\n[[mailbox]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()) + extra

    mailboxes = "".join(table(name, u) for name, u in users.items())
    path.write_text(f"""
[crm]
client_id = "{client_id}"
client_secret = "{client_secret}"
{token_line}
api_domain = "{crm.url}"
accounts_url = "{crm.url}"
timeout = {timeout}

[ledger]
path = "{path.parent / 'ledger.sqlite3'}"
{mailboxes}""")
    return path


class Daemon:
    """A running `syncd run`; its JSON log lines are in ``events`` once it has stopped.

    Its output goes to a file beside the config: a pipe nobody reads while it runs fills up and blocks it.
    """

    def __init__(self, config: Path, env: dict[str, str] | None = None):
        self.log = config.parent / "syncd.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", "--log-format", "json", "run", "-c", str(config)],
                stdout=out, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
            )
        self.events: list[dict] = []
        self.stderr = ""

    def logged(self, event: str) -> list[dict]:
        """The ``event`` lines logged so far, while it runs (a line still being written is left out)."""
        text = self.log.read_text()
        lines = text[: text.rfind("\n") + 1].splitlines()
        return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == event]

    def stop(self) -> int:
        """SIGTERM, wait, collect the log; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.stderr = self.log.read_text()
        self.events = [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]
        return code


@contextlib.contextmanager
def daemon(config: Path, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """`syncd run` for the block; it must then stop on SIGTERM with exit 0."""
    d = Daemon(config, env)
    try:
        yield d
    finally:
        code = d.stop()
    assert code == 0, d.stderr[-3000:]


def ledger_states(config: Path) -> Counter:
    """Messages per state, read from outside the daemon (WAL lets a reader in while it writes)."""
    path = config.parent / "ledger.sqlite3"
    if not path.exists():
        return Counter()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return Counter(dict(db.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall()))
    except sqlite3.OperationalError:  # the daemon has not created its tables yet
        return Counter()
    finally:
        db.close()


def all_final(config: Path, expected: int) -> bool:
    """Every one of ``expected`` messages is in the ledger in a final state."""
    states = ledger_states(config)
    return sum(states.values()) >= expected and all(s in FINAL for s in states)


def copies(server: SandboxServer) -> Counter:
    """How many times each (Message-ID, module, record) reached the CRM: every value must be 1."""
    return Counter((e.original_message_id, e.module, e.record_id) for e in server.received())
