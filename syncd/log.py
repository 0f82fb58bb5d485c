"""Logging: structlog, JSON lines when not on a terminal, readable console when on one.

Every event carries the context bound by the pipeline (mailbox, folder, uid,
message_id). Secrets registered with ``redact`` are replaced in every rendered
line as a last line of defence: none of our events should carry one anyway.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from typing import Any, TextIO

import structlog

COPY_ENV = "SYNCD_TEST_LOG_COPY"
"""Test hook: a file that every log line is appended to as well, so the test suite can scan all
of syncd's output, its subprocesses' included, for secrets (tests.fixtures.secret_scan). Unset in use."""
MAX_TOKENS = 64
"""Access tokens remembered for redaction: refreshes come hourly, so this covers days of them."""

_configured: set[str] = set()
_tokens: deque[str] = deque(maxlen=MAX_TOKENS)
_secrets: frozenset[str] = frozenset()
"""What ``_scrub`` hides: replaced whole on each change, so threads that log never see it change size."""
_lock = threading.Lock()


def redact(*values: str) -> None:
    """Never print these strings (passwords, tokens, client secrets); short ones are ignored."""
    global _secrets
    with _lock:
        _configured.update(v for v in values if v and len(v) >= 4)
        _secrets = frozenset(_configured) | frozenset(_tokens)


def redact_token(value: str) -> None:
    """Never print this access token; only the latest ``MAX_TOKENS`` are kept (older ones have expired)."""
    global _secrets
    with _lock:
        if value and len(value) >= 4:
            _tokens.append(value)
        _secrets = frozenset(_configured) | frozenset(_tokens)


def _scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _scrub_renderer(renderer: Any) -> Any:
    def render(logger: Any, name: str, event: dict) -> str:
        return _scrub(renderer(logger, name, event))

    return render


class _Copy:
    """``stream`` that also appends every line to ``path`` (``COPY_ENV``)."""

    def __init__(self, stream: TextIO, path: str):
        self._stream = stream
        self._path = path

    def write(self, text: str) -> int:
        with open(self._path, "a", encoding="utf-8") as copy:  # opened per line: nothing to close at exit
            copy.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


def configure(*, stream: TextIO | None = None, level: int = logging.INFO, json: bool | None = None) -> None:
    """Set up structlog and the stdlib root logger (httpx, apscheduler) to write to ``stream``."""
    stream = stream or sys.stderr
    if os.environ.get(COPY_ENV):
        stream = _Copy(stream, os.environ[COPY_ENV])  # type: ignore[assignment]
    as_json = (not stream.isatty()) if json is None else json
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_renderer(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_ScrubFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; httpcore logs headers (tokens) at DEBUG.
    for noisy in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _ScrubFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record))
