"""OAuth access tokens for IMAP logins (Gmail, Microsoft 365): the refresh-token grant at the provider's token URL.

One ``AccessTokens`` per mailbox lives as long as the process (``tokens_for``), so a token
is reused across polls until shortly before it expires, and only one refresh is in flight
at a time. Every access token is registered with ``syncd.log.redact_token`` the moment it arrives.
A refresh token the provider rotates (Microsoft) is used until the configured one changes: an
operator's new ``oauth_refresh_token_file`` wins at the next refresh, without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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
        o = self._oauth
        configured = o.refresh_token.reveal()
        if configured != self._configured:  # the operator gave a new one: it replaces any rotated token
            _log.info("oauth_refresh_token_changed", mailbox=self._mailbox)
            self._configured = self._refresh_token = configured
        form = {"grant_type": "refresh_token", "client_id": o.client_id, "client_secret": o.client_secret.reveal(),
                "refresh_token": self._refresh_token}
        if o.scope:
            form["scope"] = o.scope
        started = self._clock()
        try:
            response = httpx.post(o.token_url, data=form, timeout=self._timeout, headers={"Accept": "application/json"})
            answer = response.json()
        except httpx.HTTPError as exc:
            raise SourceError(f"mailbox {self._mailbox!r}: cannot reach the OAuth token endpoint "
                              f"{o.token_url}: {type(exc).__name__}") from None
        except ValueError:
            raise SourceError(f"mailbox {self._mailbox!r}: the OAuth token endpoint answered HTTP "
                              f"{response.status_code} without JSON") from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            error = str(answer.get("error", "")) if isinstance(answer, dict) else ""
            if response.status_code >= 500 or response.status_code == 429:
                raise SourceError(f"mailbox {self._mailbox!r}: the OAuth token endpoint failed (HTTP {response.status_code})")
            raise SourceAuthError(f"mailbox {self._mailbox!r}: the OAuth token endpoint refused the refresh "
                                  f"({error or 'HTTP ' + str(response.status_code)}): check "
                                  f"{_FIX.get(error, 'the oauth_* keys')}")
        log.redact_token(token)
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            log.redact(rotated)
            self._refresh_token = rotated
        lifetime = float(answer.get("expires_in") or DEFAULT_LIFETIME)
        return token, started + max(lifetime - min(EARLY, lifetime / 10), 1.0)


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
