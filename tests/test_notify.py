"""systemd's notify protocol: datagrams to $NOTIFY_SOCKET (a path or an abstract name), read back from a real socket."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from syncd.notify import Notifier


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        yield str(tmp_path / "notify"), sock


def test_ready_carries_status_in_one_datagram(path_socket):
    """ready() sends READY=1 and STATUS=... together, as newline-separated KEY=VALUE lines."""
    address, sock = path_socket
    assert Notifier({"NOTIFY_SOCKET": address}).ready("polling 2 mailbox(es)")
    assert sock.recv(4096) == b"READY=1\nSTATUS=polling 2 mailbox(es)"


def test_abstract_socket_name_starting_with_at():
    """An address written '@name' is the abstract socket 'name' (leading NUL), as systemd passes it."""
    name = f"syncd-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).stopping("bye")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_outside_systemd_every_call_is_a_no_op():
    """Without $NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.status("x") and not notifier.watchdog()


def test_unreachable_socket_is_reported_not_raised(tmp_path: Path):
    """A socket that is gone makes send() return False with a warning; the daemon goes on."""
    with capture_logs() as logs:
        assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).status("x")
    assert [e["event"] for e in logs] == ["notify_failed"]


def test_watchdog_pings_only_when_systemd_asked_this_process(path_socket):
    """WATCHDOG=1 is sent when $WATCHDOG_USEC is set and $WATCHDOG_PID (if any) is this process."""
    address, sock = path_socket
    mine = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 3.0
    assert mine.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    for env in ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, {"WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "0"}, {}):
        other = Notifier({"NOTIFY_SOCKET": address, **env})
        assert other.watchdog_interval is None
        assert not other.watchdog()
