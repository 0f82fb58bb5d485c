"""systemd's service notification protocol, spoken directly (no libsystemd).

Under ``Type=notify`` systemd hands us ``$NOTIFY_SOCKET``: a datagram socket, either a
path or an abstract name written with a leading ``@``. Each datagram is newline-separated
``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``).
With ``WatchdogSec=`` set, systemd also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
the process meant to ping) and restarts the service when no ``WATCHDOG=1`` arrives in time.
Outside systemd every call is a cheap no-op, so callers never need to ask.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("syncd.notify")


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET`` when systemd gave one; otherwise does nothing."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket's name starts with a NUL byte; systemd writes it as "@".
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; False when it could not be sent (never raises)."""
        if not self._address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            # A notification is never worth stopping the daemon for; systemd's own timeouts act instead.
            log.warning("notify_failed", error=exc.strerror or str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)

    def watchdog(self) -> bool:
        return self.watchdog_interval is not None and self.send(WATCHDOG="1")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between systemd's watchdog deadlines, when the watchdog is on and meant for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000
