"""`syncd run` as systemd's Type=notify sees it, with a socket of the test's own standing in for systemd.

This is the reduced form of the systemd integration test that CI runs: READY, STATUS, WATCHDOG
and STOPPING from the real daemon, a hung poll starving the watchdog, and one mailbox per process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.sandbox import SandboxServer
from tests.deploy.conftest import Deployment, NotifySocket, deployment, imap_of
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.wait import wait_until
from tests.test_pipeline import OWN, mail

WATCHDOG_SEC = 1.0


@pytest.fixture
def daemon(tmp_path: Path, notify_socket: NotifySocket) -> Iterator:
    """Starts `syncd run` with systemd's environment (notify socket, watchdog, credentials, state directory)."""
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(dep: Deployment, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"syncd-{len(procs)}.log"
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1e6)),
               "CREDENTIALS_DIRECTORY": str(dep.credstore), "STATE_DIRECTORY": str(state)}
        with log.open("w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "syncd", "--log-format", "json", "run", "-c", str(dep.config), *args],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
        procs.append((proc, log))
        return proc, log

    yield start
    for proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_ready_status_watchdog_and_stopping(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer,
                                            notify_socket: NotifySocket, daemon):
    """READY=1 once started, STATUS after each pass, WATCHDOG=1 while healthy, STOPPING=1 and exit 0 on SIGTERM."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Notified", message_id="<notify@x>")))
    dep = deployment(tmp_path, crm_server, {"sales": imap_of(imap_user)})
    proc, log = daemon(dep)
    wait_until(lambda: notify_socket.having("READY", "1"), "READY=1")
    wait_until(lambda: crm_server.received(), "the message to be associated")
    wait_until(lambda: any("sales: last pass" in m.get("STATUS", "") for m in notify_socket.messages), "a pass STATUS")
    wait_until(lambda: len(notify_socket.having("WATCHDOG")) >= 3, "three watchdog pings")
    assert [e.original_message_id for e in crm_server.received()] == ["notify@x"]
    assert (tmp_path / "state" / "ledger.sqlite3").exists(), "the ledger lives in $STATE_DIRECTORY when not configured"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    wait_until(lambda: notify_socket.having("STOPPING", "1"), "STOPPING=1")
    logged = log.read_text()
    assert not any(secret in logged for secret in dep.secrets)


def test_hung_poll_starves_the_watchdog(tmp_path: Path, crm_server: SandboxServer, tarpit: int,
                                        notify_socket: NotifySocket, daemon):
    """A poll stuck on a silent IMAP server stops the WATCHDOG=1 pings (so systemd restarts syncd) and says why."""
    dep = deployment(tmp_path, crm_server, {"stuck": ("127.0.0.1", tarpit, "u", "p")}, timeout=600)
    proc, log = daemon(dep)
    wait_until(lambda: notify_socket.having("READY", "1"), "READY=1")
    wait_until(lambda: any(e["event"] == "pass_stalled" for e in events(log)), "the stall to be logged")
    # The STATUS datagram is sent right after the log line; the socket's reader may not have it yet.
    wait_until(lambda: any(m.get("STATUS", "").startswith("stalled: stuck") for m in notify_socket.messages),
               "a stalled STATUS")
    pings = len(notify_socket.having("WATCHDOG"))
    # Observe a window of three watchdog intervals: a single ping in it would have kept the service alive.
    window_ends = time.monotonic() + 3 * WATCHDOG_SEC
    while time.monotonic() < window_ends:
        assert len(notify_socket.having("WATCHDOG")) == pings, "a stalled daemon fed the watchdog"
        time.sleep(0.05)
    assert proc.poll() is None, "syncd itself keeps running; restarting it is systemd's job"


def test_one_mailbox_per_process(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer,
                                 notify_socket: NotifySocket, daemon):
    """`run --mailbox NAME` (syncd@NAME.service) syncs that mailbox alone and needs no other mailbox's secrets."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Only sales", message_id="<only@x>")))
    dep = deployment(tmp_path, crm_server, {"sales": imap_of(imap_user), "support": imap_of(imap_user)})
    (dep.credstore / "support").unlink()
    proc, log = daemon(dep, "--mailbox", "sales")
    wait_until(lambda: notify_socket.having("READY", "1"), "READY=1")
    wait_until(lambda: crm_server.received(), "the message to be associated")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    started = [e for e in events(log) if e["event"] == "started"]
    assert started and started[0]["mailboxes"] == ["sales"]


def test_unknown_mailbox_is_a_config_error(tmp_path: Path, crm_server: SandboxServer, daemon):
    """`run --mailbox NAME` without such a mailbox exits 2 naming the file to add."""
    dep = deployment(tmp_path, crm_server, {"sales": ("127.0.0.1", 1, "u", "p")})
    proc, log = daemon(dep, "--mailbox", "nosuch")
    assert proc.wait(timeout=20) == 2
    assert "mailboxes.d/nosuch.toml" in log.read_text()
