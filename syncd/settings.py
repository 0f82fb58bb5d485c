"""Validated settings: what the rest of syncd is configured with (``syncd.config`` builds them)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from syncd.log import redact

_log = structlog.get_logger("syncd.settings")

DATA_CENTERS: dict[str, tuple[str, str]] = {
    # data_center: (api_domain, accounts_url)
    "com": ("https://www.zohoapis.com", "https://accounts.zoho.com"),
    "eu": ("https://www.zohoapis.eu", "https://accounts.zoho.eu"),
    "in": ("https://www.zohoapis.in", "https://accounts.zoho.in"),
    "com.au": ("https://www.zohoapis.com.au", "https://accounts.zoho.com.au"),
    "jp": ("https://www.zohoapis.jp", "https://accounts.zoho.jp"),
    "ca": ("https://www.zohoapis.ca", "https://accounts.zohocloud.ca"),
    "sa": ("https://www.zohoapis.sa", "https://accounts.zoho.sa"),
    "com.cn": ("https://www.zohoapis.com.cn", "https://accounts.zoho.com.cn"),
}


class Secret:
    """A password or token: prints as ``'***'`` everywhere, ``reveal()`` gives the value.

    Every value is also handed to ``syncd.log.redact`` on creation, so no log line of any
    command can print it, even where it slips into a library's message.

    A secret read from a file (``Secret.from_file``: ``*_file`` keys, systemd credentials)
    follows that file: ``reveal()`` stats it and reads it again when it is another file
    (inode, size or modification time changed: rewritten in place, or swapped by a rename
    or a symlink like a Kubernetes secret volume). A new non-empty value replaces the old
    one; an empty or unreadable file keeps the last good value, with one warning per change
    naming the path. ``reveal`` is called at logins and token refreshes only, so the stat is cheap.
    """

    __slots__ = ("_value", "_path", "_seen", "_problem", "_lock")

    def __init__(self, value: str):
        self._value = value
        self._path: Path | None = None
        self._seen: tuple[int, int, int] | None = None
        """The identity of the file ``_value`` was read from."""
        self._problem: tuple[object, str] | None = None
        """The unusable file last warned about (its identity, the reason): one warning per change."""
        self._lock: threading.Lock | None = None
        redact(value)

    @classmethod
    def from_file(cls, path: Path) -> Secret:
        """The file's text without surrounding whitespace, re-read by ``reveal`` when the file changes.

        Raises OSError when the file cannot be read, UnicodeDecodeError when it is not UTF-8.
        """
        path = path.absolute()
        seen = _identity(path)  # before reading: a change after this stat is seen by the next reveal
        secret = cls(_text(path))
        secret._path, secret._seen, secret._lock = path, seen, threading.Lock()
        return secret

    @property
    def path(self) -> Path | None:
        """The file this secret follows; None for a value given directly."""
        return self._path

    def reveal(self) -> str:
        if self._lock is None:
            return self._value
        with self._lock:  # several mailbox threads log in at once
            self._follow()
            return self._value

    def _follow(self) -> None:
        """Read the file again if it is not the one last read; an unusable file keeps the value."""
        assert self._path is not None
        seen: tuple[int, int, int] | None = None
        try:
            seen = _identity(self._path)
            if seen == self._seen:
                return
            value = _text(self._path)
        except OSError as exc:
            self._unusable(seen, f"cannot read it ({exc.strerror or type(exc).__name__})")
            return
        except UnicodeDecodeError:
            self._unusable(seen, "it is not UTF-8 text")
            return
        if not value:
            self._unusable(seen, "it is empty")
            return
        redact(value)  # before anything could log it
        self._seen, self._problem = seen, None
        if value != self._value:
            self._value = value
            _log.info("secret_file_reloaded", path=str(self._path))

    def _unusable(self, seen: tuple[int, int, int] | None, reason: str) -> None:
        if self._problem != (seen, reason):
            self._problem = (seen, reason)
            _log.warning("secret_file_unusable", path=str(self._path), reason=reason,
                         action="keeping the value read before; write the secret into the file")

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self.reveal()

    def __hash__(self) -> int:
        # Equal secrets must hash alike, and a file-backed secret's value may change while it
        # is a key (settings are hashed as dict keys): so no hash of the value. Few secrets exist.
        return 0

    def __bool__(self) -> bool:
        return bool(self.reveal())


def _identity(path: Path) -> tuple[int, int, int]:
    """What tells one version of a file from the next (``stat`` follows symlinks, so a swapped link counts)."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class CrmSettings:
    client_id: str
    client_secret: Secret
    refresh_token: Secret
    data_center: str = "com"
    api_version: str = "v8"
    api_domain: str | None = None
    """Fixed API domain; None means: use the one the token response names (else the data centre's)."""
    accounts_url: str = "https://accounts.zoho.com"
    modules: tuple[str, ...] = ("Contacts", "Leads")
    timeout: float = 30.0
    ca_file: Path | None = None
    """Extra CA bundle to trust (a proxy or a local test server with its own CA)."""


@dataclass(frozen=True)
class LedgerSettings:
    path: Path


@dataclass(frozen=True)
class MatchSettings:
    """Which addresses of a message count, and how they become CRM records (``[match]``, per mailbox)."""

    modules: tuple[str, ...] = ("Contacts", "Leads")
    """Modules searched, in priority order (default: ``crm.modules``)."""
    multiple: Literal["all", "first", "none-if-ambiguous"] = "all"
    """When one address has several records: all of them, the first (module order, then oldest), or none."""
    reply_to: bool = True
    """Received mail: a Reply-To that differs from From counts too (web forms relaying for a person)."""
    bcc: bool = True
    """Sent mail: Bcc recipients count, like To and Cc."""
    strip_plus_tags: bool = False
    """Mail from ``bob+news@x.com`` matches the record of ``bob@x.com`` (records are asked for both spellings)."""
    internal_domains: tuple[str, ...] = ()
    """The org's own domains (subdomains included): mail among them and the own addresses only is skipped."""
    block_addresses: tuple[str, ...] = ()
    """Addresses that never count as counterparts; a message left with none is skipped."""
    block_domains: tuple[str, ...] = ()
    """Domains (subdomains included) whose addresses never count as counterparts."""
    skip_auto_replies: bool = True
    skip_bounces: bool = True
    skip_lists: bool = True
    cache_ttl: float = 300.0
    """Seconds an address's records (or their absence) are reused within one process; 0 disables the cache."""
    batch_lookups: bool = True
    """One COQL query per module for many addresses (``Email in (...)``) instead of one search per address."""
    unmatched_window_days: float = 30.0
    """Unmatched messages are re-checked this long after they were seen, so records created later get them."""
    unmatched_recheck: float = 3600.0
    """Seconds between two lookups of an address that had no record (the negative cache's expiry)."""


@dataclass(frozen=True)
class OAuthSettings:
    """A mailbox's OAuth client and refresh token; access tokens come from ``token_url`` (refresh-token grant)."""

    token_url: str
    client_id: str
    client_secret: Secret
    refresh_token: Secret
    scope: str = ""
    """Sent with each refresh when set (Microsoft wants e.g. ``https://outlook.office.com/IMAP.AccessAsUser.All``)."""
    state_file: Path | None = None
    """Where a refresh token the provider rotates is kept across restarts (``LEDGER-MAILBOX.oauth.json``,
    mode 0600); None: only in memory. syncd's own state, so the configured token's file is never written."""


@dataclass(frozen=True)
class MailboxSettings:
    name: str
    host: str = ""
    port: int = 993
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    folders: tuple[str, ...] = ("INBOX",)
    sent_folders: tuple[str, ...] | None = None
    """None: discover the folders marked ``\\Sent`` (SPECIAL-USE)."""
    poll_interval: float = 60.0
    addresses: tuple[str, ...] = ()
    """The mailbox's own addresses (lower-cased); mail from them is sent mail."""
    allow_insecure: bool = False
    ca_file: Path | None = None
    timeout: float = 60.0
    batch_size: int = 50
    max_message_size: int = 25 * 1024 * 1024
    maildir: Path | None = None
    """A local Maildir instead of IMAP (demo, archive import): its folders are ``folders``."""
    mbox: Path | None = None
    """A local mbox file instead of IMAP (archive import): one folder named after the file."""
    source_file: str = ""
    """The file this mailbox was configured in, for error messages."""
    auth: Literal["password", "xoauth2", "oauthbearer"] = "password"
    """How to log in: the password, or an OAuth access token (Gmail, Microsoft 365) with SASL XOAUTH2 / OAUTHBEARER."""
    oauth: OAuthSettings | None = None
    """Where access tokens come from when ``auth`` is not ``password``."""
    match: MatchSettings = field(default_factory=MatchSettings)
    owner_id: str | None = None
    """The Zoho user whose mail this is (else ``owner_email``, looked up; else the token's user)."""
    owner_email: str | None = None
    predict_deals: bool = True
    """Link mail associated with a Contact to its predicted Deal (syncd/deals.py)."""


@dataclass(frozen=True)
class MetricsSettings:
    listen: tuple[str, int] | None = None
    """(host, port) of the /metrics, /healthz and /readyz endpoint; None: no endpoint."""


@dataclass(frozen=True)
class Settings:
    crm: CrmSettings
    ledger: LedgerSettings
    mailboxes: tuple[MailboxSettings, ...]
    source_file: str = ""
    demo: bool = False
    """True when no configuration was found and the built-in sandbox and sample mailbox are used."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
