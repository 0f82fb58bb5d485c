"""OAuth access tokens for IMAP logins (Gmail, Microsoft 365): the refresh-token grant at the provider's token URL.

One ``AccessTokens`` per mailbox lives as long as the process (``tokens_for``), so a token
is reused across polls until shortly before it expires, and only one refresh is in flight
at a time. Every access token is registered with ``syncd.log.redact_token`` the moment it arrives.

A refresh token the provider rotates (Microsoft) is used until the configured one changes: an
operator's new ``oauth_refresh_token_file`` wins at the next refresh, without a restart. The
rotated token is also kept in syncd's state (``OAuthSettings.state_file``, beside the ledger,
never in the ledger and never in the operator's file, which may be a read-only credential), with
a fingerprint of the configured token it descends from, so a restart months later carries on
with it instead of the long-expired token the operator once pasted. A configured token that
changed since makes the stored one void; a stored token the provider refuses falls back once
to the configured one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import structlog

from syncd import log
from syncd.errors import SourceAuthError, SourceError
from syncd.settings import MailboxSettings, OAuthSettings

_log = structlog.get_logger("syncd.source")

EARLY = 300.0
"""Refresh this long before expiry (at most a tenth of the lifetime), so no login carries a dying token."""
DEFAULT_LIFETIME = 3600.0
"""Assumed when the provider's answer has no ``expires_in``."""

# RFC 6749 section 5.2 error codes, and the keys an operator fixes for each.
_FIX = {
    "invalid_grant": "oauth_refresh_token (expired, revoked, or issued to another client): get a new one",
    "invalid_client": "oauth_client_id and oauth_client_secret",
    "unauthorized_client": "oauth_client_id (this client may not use refresh tokens)",
    "invalid_scope": "oauth_scope",
}


def fingerprint(refresh_token: str) -> str:
    """What the state file records of the configured token: enough to tell it changed, nothing to log in with."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()


class AccessTokens:
    """Hands out a valid access token for one mailbox; thread-safe; never shows the secrets it holds."""

    def __init__(self, mailbox: str, oauth: OAuthSettings, *, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self._mailbox = mailbox
        self._oauth = oauth
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None
        """The access token and when to replace it (clock time)."""
        self._configured = oauth.refresh_token.reveal()
        """The refresh token as last read from the settings (its file may be replaced while syncd runs)."""
        # Providers that rotate refresh tokens (Microsoft) send a new one with each access token.
        self._refresh_token = self._configured
        self._origin = "configured"
        """Where ``_refresh_token`` came from, for the log: configured, stored (the state file) or rotated."""
        self._restored = False
        """The state file was read (at the first refresh)."""
        self._unwritable: str | None = None
        """The reason the state file could not be written last time: one warning per reason."""

    def __repr__(self) -> str:
        return f"AccessTokens(mailbox={self._mailbox!r}, has_token={self._current is not None})"

    def token(self) -> str:
        with self._lock:
            if self._current is None or self._clock() >= self._current[1]:
                self._current = self._refresh()
            return self._current[0]

    def invalidate(self, token: str) -> None:
        """The server refused ``token``: the next ``token()`` gets a new one (unless another thread already did)."""
        with self._lock:
            self._current = None if self._current and self._current[0] == token else self._current

    def _refresh(self) -> tuple[str, float]:
        configured = self._oauth.refresh_token.reveal()
        if configured != self._configured:  # the operator gave a new one: it replaces any rotated token
            _log.info("oauth_refresh_token_changed", mailbox=self._mailbox)
            self._configured = self._refresh_token = configured
            self._origin = "configured"
        if not self._restored:
            self._restored = True
            self._restore()
        started = self._clock()
        status, answer = self._grant(self._refresh_token)
        if answer.get("error") == "invalid_grant" and self._refresh_token != self._configured:
            _log.warning("oauth_refresh_token_refused", mailbox=self._mailbox, token=self._origin,
                         action="trying the configured oauth_refresh_token instead")
            self._refresh_token, self._origin = self._configured, "configured"
            status, answer = self._grant(self._refresh_token)
            if isinstance(answer.get("access_token"), str) and answer["access_token"]:
                _log.info("oauth_refresh_token_used", mailbox=self._mailbox, token="configured")
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            error = str(answer.get("error", ""))
            if status >= 500 or status == 429:
                raise SourceError(f"mailbox {self._mailbox!r}: the OAuth token endpoint failed (HTTP {status})")
            raise SourceAuthError(f"mailbox {self._mailbox!r}: the OAuth token endpoint refused the refresh "
                                  f"({error or 'HTTP ' + str(status)}): check "
                                  f"{_FIX.get(error, 'the oauth_* keys')}")
        log.redact_token(token)
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            log.redact(rotated)
            self._refresh_token, self._origin = rotated, "rotated"
            self._save(rotated)
        lifetime = float(answer.get("expires_in") or DEFAULT_LIFETIME)
        return token, started + max(lifetime - min(EARLY, lifetime / 10), 1.0)

    def _grant(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        """One refresh-token grant: the HTTP status and the JSON answer (``{}`` when it is not an object)."""
        o = self._oauth
        form = {"grant_type": "refresh_token", "client_id": o.client_id, "client_secret": o.client_secret.reveal(),
                "refresh_token": refresh_token}
        if o.scope:
            form["scope"] = o.scope
        try:
            response = httpx.post(o.token_url, data=form, timeout=self._timeout, headers={"Accept": "application/json"})
            answer = response.json()
        except httpx.HTTPError as exc:
            raise SourceError(f"mailbox {self._mailbox!r}: cannot reach the OAuth token endpoint "
                              f"{o.token_url}: {type(exc).__name__}") from None
        except ValueError:
            raise SourceError(f"mailbox {self._mailbox!r}: the OAuth token endpoint answered HTTP "
                              f"{response.status_code} without JSON") from None
        return response.status_code, answer if isinstance(answer, dict) else {}

    def _restore(self) -> None:
        """Carry on with the rotated token a process before stored, if it descends from the configured one."""
        path = self._oauth.state_file
        if path is None:
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except OSError as exc:
            self._state_unusable(path, f"cannot read it ({exc.strerror or type(exc).__name__})")
            return
        except ValueError:  # not UTF-8, not JSON
            data = None
        stored = data.get("refresh_token") if isinstance(data, dict) else None
        if isinstance(stored, str) and stored:
            log.redact(stored)  # before anything could log it
        origin = data.get("configured_sha256") if isinstance(data, dict) else None
        if not isinstance(stored, str) or not stored or not isinstance(origin, str):
            self._state_unusable(path, "it is not a syncd OAuth state file (corrupt or cut short)")
            return
        if origin != fingerprint(self._configured):
            _log.info("oauth_state_outdated", mailbox=self._mailbox, path=str(path),
                      action="oauth_refresh_token changed since this rotated token was stored: using the configured one")
            return
        self._refresh_token, self._origin = stored, "stored"
        _log.info("oauth_refresh_token_restored", mailbox=self._mailbox, path=str(path), token="stored")

    def _state_unusable(self, path: Path, reason: str) -> None:
        _log.warning("oauth_state_unusable", mailbox=self._mailbox, path=str(path), reason=reason,
                     action="using the configured oauth_refresh_token; the file is replaced at the next rotation")

    def _save(self, rotated: str) -> None:
        """Keep the rotated token for the next start; a failure only costs that (the token still works in memory)."""
        path = self._oauth.state_file
        if path is None:
            return
        state = {"refresh_token": rotated, "configured_sha256": fingerprint(self._configured),
                 "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            _write_private(path, json.dumps(state) + "\n")
        except OSError as exc:
            reason = f"cannot write it ({exc.strerror or type(exc).__name__})"
            if reason != self._unwritable:
                self._unwritable = reason
                _log.warning("oauth_state_unwritable", mailbox=self._mailbox, path=str(path), reason=reason,
                             action="the rotated refresh token is used until syncd stops; a restart goes back to the "
                                    "configured one: check the ledger directory's permissions and free space")
            return
        self._unwritable = None


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600: a crash leaves the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


_holders: dict[tuple[str, OAuthSettings], AccessTokens] = {}
_holders_lock = threading.Lock()


def tokens_for(settings: MailboxSettings) -> AccessTokens:
    """The process-wide token holder of a mailbox (a new one when its OAuth settings changed)."""
    assert settings.oauth is not None
    key = (settings.name, settings.oauth)
    with _holders_lock:
        if key not in _holders:
            _holders[key] = AccessTokens(settings.name, settings.oauth, timeout=settings.timeout)
        return _holders[key]
