"""What the deployment tests share: an /etc/syncd-style config tree, a notify socket, a tarpit, a deadline.

Slow tests (booting a systemd container, building an image) run only with ``SYNCD_SLOW_TESTS=1``
(``bash tests/run`` passes the environment through); CI runs the fast ones.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser

slow = pytest.mark.skipif(os.environ.get("SYNCD_SLOW_TESTS") != "1",
                          reason="slow deployment test: run with SYNCD_SLOW_TESTS=1")


@dataclass
class Deployment:
    """A config tree laid out as in /etc/syncd, with its secrets in a separate credential store."""

    etc: Path
    credstore: Path
    secrets: tuple[str, ...]

    @property
    def config(self) -> Path:
        return self.etc / "syncd.toml"


def deployment(root: Path, crm: SandboxServer, mailboxes: dict[str, tuple[str, int, str, str]],
               **mailbox_keys: object) -> Deployment:
    """Main file with [crm] only (no secrets in it), one mailboxes.d/NAME.toml each, secrets as credentials.

    ``mailboxes``: name -> (host, port, username, password). ``mailbox_keys`` go into every mailbox table.
    """
    client_id, client_secret, refresh_token = crm.credentials()
    etc, credstore = root / "etc", root / "credstore"
    (etc / "mailboxes.d").mkdir(parents=True)
    credstore.mkdir()
    (etc / "syncd.toml").write_text(f"""
[crm]
client_id = "{client_id}"
api_domain = "{crm.url}"
accounts_url = "{crm.url}"
timeout = 5
""")
    (credstore / "client_secret").write_text(client_secret)
    (credstore / "refresh_token").write_text(refresh_token)
    extra = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in mailbox_keys.items())
    for name, (host, port, username, password) in mailboxes.items():
        (etc / "mailboxes.d" / f"{name}.toml").write_text(f"""
[mailbox]
name = "{name}"
host = "{host}"
port = {port}
security = "none"
username = "{username}"
addresses = ["me@ourco.example"]
poll_interval = 1
{extra}""")
        (credstore / name).write_text(password)
    return Deployment(etc, credstore, (client_secret, refresh_token, *(m[3] for m in mailboxes.values())))


def imap_of(user: ImapUser) -> tuple[str, int, str, str]:
    return user.host, user.port, user.username, user.password


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A loopback port that accepts TCP connections (the kernel's backlog) but never says a word: a hung IMAP server."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield server.getsockname()[1]


class NotifySocket:
    """A datagram socket standing in for systemd's: every notification received, in order."""

    def __init__(self, path: Path):
        self.address = str(path)
        self.messages: list[dict[str, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.settimeout(0.1)
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def having(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        return [m for m in self.messages if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()
