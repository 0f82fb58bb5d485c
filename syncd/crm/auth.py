"""Zoho OAuth access tokens from the refresh-token grant, shared by every thread of a client.

Zoho allows about ten refreshes per ten minutes per refresh token, so the token is cached
until shortly before it expires, only one refresh is ever in flight (other threads wait for
its result instead of starting their own), and a failed refresh is remembered for a while
rather than hammered — unless the client secret or refresh token it used has changed since
(an operator wrote a new token into the ``*_file``): then the next call tries the new one at
once. The HTTP call itself is the client's (``fetch``), which already maps
transport faults to ``syncd.errors``; this module only reads what the token endpoint says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from syncd.errors import CrmError, CrmOrgError, CrmTransientError
from syncd.log import redact_token
from syncd.settings import DATA_CENTERS, CrmSettings

log = structlog.get_logger("syncd.crm")

TokenFetch = Callable[[Mapping[str, str]], Mapping[str, Any]]
"""POSTs the form to the token endpoint and returns the decoded JSON answer."""

_EARLY = 300.0
"""Refresh this many seconds before the token expires, so no request carries a dying token."""
_HOLD_ORG_FAILURE = 300.0
"""A refused refresh (revoked token, wrong secret) is not asked again for this long with the same credentials."""
_HOLD_TRANSIENT_MAX = 60.0
"""A 5xx or an unreachable token endpoint is tried again after 2, 4, 8 ... at most this many seconds."""

# Zoho's "error" values and the setting an operator has to fix for each.
_SETTING_FOR_ERROR = {
    "invalid_code": "crm.refresh_token (revoked, expired or from another data centre)",
    "invalid_client": "crm.client_id (unknown client, or a client of another data centre)",
    "invalid_client_secret": "crm.client_secret",
    "invalid_redirect_uri": "crm.client_id (the client's redirect URI)",
    "unauthorized_client": "crm.client_id (the client may not use refresh tokens)",
}


class TokenManager:
    """Hands out a valid access token; thread-safe; never shows the secrets it holds."""

    def __init__(self, settings: CrmSettings, fetch: TokenFetch, *, clock: Callable[[], float] = time.monotonic):
        self._settings = settings
        self._fetch = fetch
        self._clock = clock
        # Held for the whole refresh: that is what makes concurrent callers wait for one refresh.
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._api_domain: str | None = None
        self._failure: tuple[CrmError, float, tuple[str, str]] | None = None
        """The failed refresh's error, until when it is held, and the (client secret, refresh token) it used."""
        self._transient_failures = 0

    def __repr__(self) -> str:
        return f"TokenManager(client_id={self._settings.client_id!r}, has_token={self._token is not None})"

    @property
    def api_domain(self) -> str:
        """Where API calls go: the configured domain, else the token's, else the data centre's."""
        if self._settings.api_domain:
            return self._settings.api_domain.rstrip("/")
        if self._api_domain:
            return self._api_domain
        return DATA_CENTERS.get(self._settings.data_center, DATA_CENTERS["com"])[0]

    def token(self) -> str:
        """A token valid for a while yet; refreshes (once, for all threads) when needed."""
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._expires_at:
                return self._token
            held = self._held(now)
            if held is not None:
                raise held
            credentials = self._credentials()
            try:
                self._refresh(now, credentials)
            except CrmError as exc:
                hold = _HOLD_ORG_FAILURE
                if isinstance(exc, CrmTransientError):
                    self._transient_failures += 1
                    hold = exc.retry_after or min(_HOLD_TRANSIENT_MAX, 2.0**self._transient_failures)
                self._failure = (exc, now + hold, credentials)
                raise
            self._failure = None
            self._transient_failures = 0
            assert self._token is not None
            return self._token

    def holding_failure(self) -> bool:
        """True while a failed refresh is remembered: asking again now would only repeat its error."""
        with self._lock:
            return self._held(self._clock()) is not None

    def invalidate(self, token: str) -> None:
        """Zoho refused ``token``: drop it, unless another thread already replaced it."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _credentials(self) -> tuple[str, str]:
        """The client secret and refresh token as configured now (a ``*_file`` is re-read when replaced)."""
        return self._settings.client_secret.reveal(), self._settings.refresh_token.reveal()

    def _held(self, now: float) -> CrmError | None:
        """The error of a failed refresh while it is held; None once its time is up or its credentials changed."""
        if self._failure is None or now >= self._failure[1]:
            return None
        error, _, used = self._failure
        changed = [key for key, old, new in zip(("crm.client_secret", "crm.refresh_token"), used, self._credentials())
                   if old != new]
        if not changed:
            return error
        log.info("crm_credentials_changed", changed=changed, failed=error.code,
                 action="refreshing the access token with the new credentials now")
        self._failure = None
        return None

    def _refresh(self, now: float, credentials: tuple[str, str]) -> None:
        client_secret, refresh_token = credentials
        form = {
            "grant_type": "refresh_token",
            "client_id": self._settings.client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
        }
        answer = self._fetch(form)
        error = answer.get("error")
        if error:
            raise _token_error(str(error), str(answer.get("error_description") or ""))
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise CrmTransientError("Zoho's token endpoint answered without an access_token", code="NO_TOKEN")
        expires_in = float(answer.get("expires_in") or 3600)
        self._token = token
        redact_token(token)  # never printed, whatever library message it ends up in
        self._expires_at = now + max(expires_in - min(_EARLY, expires_in / 10), 1.0)
        domain = answer.get("api_domain")
        if isinstance(domain, str) and domain:
            self._api_domain = domain.rstrip("/")


def _token_error(error: str, description: str) -> CrmError:
    """Zoho's 200 ``{"error": ...}`` as one of our errors; its text never contains the secrets we sent."""
    text = f"{error} {description}".lower()
    if "access denied" in text or "too many requests" in text:
        return CrmTransientError(
            f"Zoho throttled token refreshes ({error}): waiting before the next one",
            code="TOKEN_RATE_LIMIT",
            retry_after=60.0,
        )
    setting = _SETTING_FOR_ERROR.get(error, "crm.client_id, crm.client_secret and crm.refresh_token")
    return CrmOrgError(f"Zoho refused the token refresh ({error}): check {setting}", code=error)
