"""Prometheus metrics, and the small HTTP endpoint that serves them with /healthz and /readyz.

The metric objects live at module level on prometheus-client's default registry, so the
pipeline and the CRM client report with one call and no wiring. Label values are only
ever mailbox names, folder-free counts, CRM endpoint names, HTTP status codes and ledger
states: small sets chosen by the operator or by syncd, never message ids or addresses.

The endpoint is off unless ``[metrics] listen`` is set; a bare port listens on loopback.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from syncd.errors import SyncdError
from syncd.ledger import FINAL, State

log = structlog.get_logger("syncd.metrics")

MESSAGES = Counter("syncd_messages", "Messages that reached a verdict, by state (done = associated).",
                   ["mailbox", "state"])
SEEN = Counter("syncd_messages_seen", "Messages fetched and examined.", ["mailbox"])
BACKLOG = Gauge("syncd_backlog_messages", "Messages found by the current or last pass that are not in a final state yet.",
                ["mailbox"])
PASSES = Counter("syncd_passes", "Passes over a mailbox, by outcome (complete, incomplete, failed).",
                 ["mailbox", "outcome"])
LAST_POLL = Gauge("syncd_last_poll_timestamp_seconds", "When the last pass of a mailbox ended (Unix time).",
                  ["mailbox"])
LAST_SUCCESS = Gauge("syncd_last_successful_poll_timestamp_seconds",
                     "When the last pass of a mailbox that hit no error ended (Unix time).", ["mailbox"])
CRM_CALLS = Counter("syncd_crm_calls", "Zoho CRM HTTP calls, by endpoint.", ["endpoint"])
CRM_ERRORS = Counter("syncd_crm_errors", "Zoho CRM calls that failed, by endpoint and HTTP status "
                     "(or 'network' when no answer came).", ["endpoint", "code"])
CRM_LATENCY = Histogram("syncd_crm_request_duration_seconds", "Zoho CRM call latency, by endpoint.", ["endpoint"],
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CRM_CREDITS = Gauge("syncd_crm_api_credits_remaining", "API credits left today, as Zoho last reported "
                    "(X-API-CREDITS-REMAINING).")


class Watcher(Protocol):
    """Follows a pass message by message (the backfill progress display)."""

    def folder_started(self, mailbox: str, folder: str, todo: int) -> None: ...

    def message_recorded(self, mailbox: str, folder: str, state: State) -> None: ...


_lock = threading.Lock()
_backlog: dict[tuple[str, str], int] = {}
_watchers: list[Watcher] = []


@contextmanager
def watching(watcher: Watcher) -> Iterator[None]:
    """Let ``watcher`` follow every pass while the block runs."""
    with _lock:
        _watchers.append(watcher)
    try:
        yield
    finally:
        with _lock:
            _watchers.remove(watcher)


def _set_backlog(mailbox: str) -> None:
    BACKLOG.labels(mailbox).set(sum(n for (m, _), n in _backlog.items() if m == mailbox))


def folder_started(mailbox: str, folder: str, todo: int) -> None:
    """A folder scan found ``todo`` messages to handle."""
    with _lock:
        _backlog[(mailbox, folder)] = todo
        _set_backlog(mailbox)
        watchers = list(_watchers)
    for w in watchers:
        w.folder_started(mailbox, folder, todo)


def message_recorded(mailbox: str, folder: str, state: State) -> None:
    """One message got its verdict for this pass."""
    SEEN.labels(mailbox).inc()
    MESSAGES.labels(mailbox, str(state)).inc()
    with _lock:
        if state in FINAL and _backlog.get((mailbox, folder), 0) > 0:
            _backlog[(mailbox, folder)] -= 1
            _set_backlog(mailbox)
        watchers = list(_watchers)
    for w in watchers:
        w.message_recorded(mailbox, folder, state)


def pass_done(mailbox: str, *, complete: bool, failed: bool) -> None:
    now = time.time()
    PASSES.labels(mailbox, "failed" if failed else "complete" if complete else "incomplete").inc()
    LAST_POLL.labels(mailbox).set(now)
    if not failed:
        LAST_SUCCESS.labels(mailbox).set(now)


def crm_answered(endpoint: str, status: int, headers: Mapping[str, str], seconds: float) -> None:
    """One CRM call got an HTTP answer (any status)."""
    CRM_CALLS.labels(endpoint).inc()
    CRM_LATENCY.labels(endpoint).observe(seconds)
    if status >= 400:
        CRM_ERRORS.labels(endpoint, str(status)).inc()
    credits = headers.get("X-API-CREDITS-REMAINING")
    if credits is not None and credits.strip().isdigit():
        CRM_CREDITS.set(int(credits))


def crm_unanswered(endpoint: str, seconds: float) -> None:
    """One CRM call got no answer (connection refused or dropped, timeout)."""
    CRM_CALLS.labels(endpoint).inc()
    CRM_LATENCY.labels(endpoint).observe(seconds)
    CRM_ERRORS.labels(endpoint, "network").inc()


def parse_listen(value: str) -> tuple[str, int]:
    """``"9310"``, ``":9310"``, ``"127.0.0.1:9310"`` or ``"[::1]:9310"`` as (host, port); bare ports are loopback."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        host, port = "", value.strip()
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535")
    return host, int(port)


Readiness = Callable[[], list[str]]
"""What keeps syncd from being ready, one line each; empty when ready."""


class _Handler(BaseHTTPRequestHandler):
    ready: Readiness

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: a health check every few seconds is not news."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            problems = self.ready()
            body = json.dumps({"ready": not problems, "problems": problems}).encode() + b"\n"
            self._answer(503 if problems else 200, body, "application/json")
        else:
            self._answer(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MetricsServer:
    """/metrics, /healthz and /readyz over HTTP in a background thread."""

    def __init__(self, host: str, port: int, ready: Readiness):
        handler = type("Handler", (_Handler,), {"ready": staticmethod(ready)})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name="metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def serve(listen: tuple[str, int] | None, ready: Readiness) -> MetricsServer | None:
    """Start the endpoint when configured; it lives as long as the process (daemon thread)."""
    if listen is None:
        return None
    host, port = listen
    try:
        server = MetricsServer(host, port, ready)
    except OSError as exc:
        raise SyncdError(f"cannot serve metrics on {host}:{port} ({exc.strerror}): "
                         "change [metrics] listen, or stop what uses that port") from None
    server.__enter__()
    log.info("metrics_listening", url=f"http://{host}:{server.address[1]}/metrics")
    return server
