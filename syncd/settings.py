"""Validated settings: what the rest of syncd is configured with (``syncd.config`` builds them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from syncd.log import redact

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
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value
        redact(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


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
