"""Load the TOML configuration into ``Settings``, reporting every problem at once.

Sources, in order: the main file (``-c``, ``$SYNCD_CONFIG``, ``/etc/syncd/syncd.toml``),
then ``mailboxes.d/*.toml`` beside it (one ``[mailbox]`` table each). Secrets come from
the key itself, a ``*_file`` key, a systemd credential or an environment variable
(``SYNCD_CRM_CLIENT_SECRET``, ``SYNCD_CRM_REFRESH_TOKEN``, ``SYNCD_MAILBOX_<NAME>_PASSWORD``).
Every problem names the file, the key and the fix; the CLI exits 2 on them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from syncd.errors import ConfigError, Problem
from syncd.metrics import parse_listen
from syncd.addrkey import address_key, domain_key
from syncd.settings import (
    DATA_CENTERS,
    CrmSettings,
    LedgerSettings,
    MailboxSettings,
    MetricsSettings,
    OAuthSettings,
    MatchSettings,
    Secret,
    Settings,
)

DEFAULT_PATH = Path("/etc/syncd/syncd.toml")
METRICS_LISTEN_ENV = "SYNCD_METRICS_LISTEN"
DEFAULT_LEDGER = Path("/var/lib/syncd/ledger.sqlite3")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class _CrmTable(_Strict):
    data_center: Literal["com", "eu", "in", "com.au", "jp", "ca", "sa", "com.cn"] = "com"
    client_id: str = ""
    client_secret: str | None = None
    client_secret_file: str | None = None
    refresh_token: str | None = None
    refresh_token_file: str | None = None
    api_version: str = Field("v8", pattern=r"^v\d+$")
    api_domain: str | None = Field(None, pattern=r"^https?://[^/\s]+$")
    accounts_url: str | None = Field(None, pattern=r"^https?://[^/\s]+$")
    modules: list[str] = Field(default_factory=lambda: ["Contacts", "Leads"], min_length=1)
    timeout: float = Field(30.0, gt=0)
    ca_file: str | None = None


class _LedgerTable(_Strict):
    path: str | None = None


class _MatchTable(_Strict):
    """``[match]`` and ``[mailbox.match]``: every key optional, a mailbox's keys override the global ones."""

    modules: list[str] | None = Field(None, min_length=1)
    multiple: Literal["all", "first", "none-if-ambiguous"] | None = None
    reply_to: bool | None = None
    bcc: bool | None = None
    strip_plus_tags: bool | None = None
    internal_domains: list[str] | None = None
    block_addresses: list[str] | None = None
    block_domains: list[str] | None = None
    skip_auto_replies: bool | None = None
    skip_bounces: bool | None = None
    skip_lists: bool | None = None
    cache_ttl: float | None = Field(None, ge=0)
    batch_lookups: bool | None = None
    unmatched_window_days: float | None = Field(None, ge=0)
    unmatched_recheck: float | None = Field(None, ge=0)


class _MailboxTable(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    host: str = ""
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = ""
    password: str | None = None
    password_file: str | None = None
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    sent_folders: list[str] | None = None
    poll_interval: float = Field(60.0, ge=1)
    addresses: list[str] = Field(default_factory=list)
    allow_insecure: bool = False
    ca_file: str | None = None
    timeout: float = Field(60.0, gt=0)
    batch_size: int = Field(50, ge=1, le=1000)
    max_message_size: int = Field(25 * 1024 * 1024, ge=1024)
    maildir: str | None = None
    mbox: str | None = None
    auth: Literal["password", "xoauth2", "oauthbearer"] = "password"
    oauth_token_url: str | None = Field(None, pattern=r"^https?://\S+$")
    oauth_client_id: str = ""
    oauth_client_secret: str | None = None
    oauth_client_secret_file: str | None = None
    oauth_refresh_token: str | None = None
    oauth_refresh_token_file: str | None = None
    oauth_scope: str = ""
    match: dict[str, Any] = Field(default_factory=dict)
    owner_id: str | None = Field(None, pattern=r"^\d+$")
    owner_email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$")
    predict_deals: bool = True


class _MetricsTable(_Strict):
    listen: str | None = None


class _MainFile(_Strict):
    crm: dict[str, Any] = Field(default_factory=dict)
    ledger: dict[str, Any] = Field(default_factory=dict)
    match: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    mailbox: list[dict[str, Any]] = Field(default_factory=list)


_FIXES = {
    "missing": "add this key",
    "extra_forbidden": "remove it, or check its spelling against config/syncd.toml",
    "string_pattern_mismatch": "see config/syncd.toml for the expected form",
}


def _problems_from(err: ValidationError, file: str, prefix: str) -> list[Problem]:
    problems = []
    for e in err.errors():
        key = ".".join([prefix, *(str(p) for p in e["loc"])]).strip(".")
        kind = e["type"]
        if kind == "literal_error":
            fix = "use one of " + e["ctx"]["expected"]
        elif kind == "string_pattern_mismatch":
            fix = f"it must match {e['ctx']['pattern']}"
        else:
            fix = _FIXES.get(kind, "correct the value")
        problems.append(Problem(file, key, e["msg"].lower(), fix))
    return problems


def _read_toml(path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(Problem(str(path), "", "file not found", "create it (see config/syncd.toml) or pass -c FILE"))
    except PermissionError:
        problems.append(Problem(str(path), "", "permission denied", "make it readable by the user syncd runs as"))
    except tomllib.TOMLDecodeError as exc:
        problems.append(Problem(str(path), "", f"not valid TOML: {exc}", "fix the syntax at that line"))
    except OSError as exc:
        problems.append(Problem(str(path), "", f"cannot read: {exc.strerror}", "check the path"))
    return None


def _env_name(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9]", "_", p).upper() for p in ("SYNCD", *parts))


class _SecretReader:
    """Resolves a secret from key, ``*_file``, systemd credential or environment, in that order."""

    def __init__(self, base: Path, env: Mapping[str, str], problems: list[Problem], *, needed: bool = True):
        self.base = base
        self.env = env
        self.problems = problems
        self.needed = needed

    def __call__(self, table: BaseModel, key: str, *, file: str, prefix: str, env_var: str, credential: str) -> Secret:
        if not self.needed:
            return Secret("")
        inline = getattr(table, key)
        path = getattr(table, f"{key}_file")
        if inline and path:
            self.problems.append(
                Problem(file, f"{prefix}.{key}", f"both {key} and {key}_file are set", "keep only one of them")
            )
        if inline:
            return Secret(inline)
        if path:
            return self._from_file(Path(path), file, f"{prefix}.{key}_file")
        cred_dir = self.env.get("CREDENTIALS_DIRECTORY")
        if cred_dir and (Path(cred_dir) / credential).is_file():
            return self._from_file(Path(cred_dir) / credential, file, f"{prefix}.{key}")
        if self.env.get(env_var):
            return Secret(self.env[env_var])
        self.problems.append(
            Problem(
                file,
                f"{prefix}.{key}",
                "no value given",
                f"set {key} or {key}_file, a systemd credential named {credential!r}, or ${env_var}",
            )
        )
        return Secret("")

    def _from_file(self, path: Path, file: str, key: str) -> Secret:
        """A secret that follows its file: a running syncd picks up a replaced token (``Secret.from_file``)."""
        path = path if path.is_absolute() else self.base / path
        try:
            secret = Secret.from_file(path)
        except OSError as exc:
            self.problems.append(Problem(file, key, f"cannot read {path}: {exc.strerror}", "check the path and its permissions"))
            return Secret("")
        except UnicodeDecodeError:
            self.problems.append(Problem(file, key, f"{path} is not UTF-8 text", "write the secret into it as plain text"))
            return Secret("")
        if not secret:
            self.problems.append(Problem(file, key, f"{path} is empty", "write the secret into it"))
        return secret


def _resolve(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _crm(raw: dict[str, Any], file: str, secret: _SecretReader, problems: list[Problem]) -> CrmSettings | None:
    try:
        t = _CrmTable.model_validate(raw)
    except ValidationError as err:
        problems.extend(_problems_from(err, file, "crm"))
        return None
    client_id = t.client_id or secret.env.get("SYNCD_CRM_CLIENT_ID", "")
    if not client_id:
        problems.append(Problem(file, "crm.client_id", "no value given", "set it to your Zoho API client id (1000.XXXX) or set $SYNCD_CRM_CLIENT_ID"))
    client_secret = secret(t, "client_secret", file=file, prefix="crm", env_var="SYNCD_CRM_CLIENT_SECRET", credential="client_secret")
    refresh_token = secret(t, "refresh_token", file=file, prefix="crm", env_var="SYNCD_CRM_REFRESH_TOKEN", credential="refresh_token")
    api_domain, accounts = DATA_CENTERS[t.data_center]
    return CrmSettings(
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        data_center=t.data_center,
        api_version=t.api_version,
        api_domain=t.api_domain.rstrip("/") if t.api_domain else None,
        accounts_url=(t.accounts_url or accounts).rstrip("/"),
        modules=tuple(t.modules),
        timeout=t.timeout,
        ca_file=_resolve(secret.base, t.ca_file),
    )


def _match(raw: dict[str, Any], file: str, prefix: str, base: MatchSettings, problems: list[Problem]) -> MatchSettings:
    """``base`` with the keys of one ``match`` table applied; bad addresses and domains are problems."""
    try:
        t = _MatchTable.model_validate(raw)
    except ValidationError as err:
        problems.extend(_problems_from(err, file, prefix))
        return base
    given = {k: v for k, v in t.model_dump().items() if v is not None}
    for key in ("internal_domains", "block_domains", "block_addresses"):
        if key not in given:
            continue
        values = []
        for i, value in enumerate(given[key]):
            normal = address_key(value) if key == "block_addresses" else domain_key(value)
            if normal is None:
                kind = "an address (name@domain)" if key == "block_addresses" else "a domain (example.com)"
                problems.append(Problem(file, f"{prefix}.{key}[{i}]", f"{value!r} is not {kind}", f"write it as {kind}"))
            else:
                values.append(normal)
        given[key] = values
    return replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def _mailbox(raw: dict[str, Any], file: str, prefix: str, secret: _SecretReader, problems: list[Problem],
             match: MatchSettings = MatchSettings(), ledger: Path | None = None) -> MailboxSettings | None:
    try:
        t = _MailboxTable.model_validate(raw)
    except ValidationError as err:
        problems.extend(_problems_from(err, file, prefix))
        return None
    local = t.maildir or t.mbox
    if t.maildir and t.mbox:
        problems.append(Problem(file, f"{prefix}.mbox", "maildir and mbox are both set", "keep one source per mailbox"))
    if t.owner_id and t.owner_email:
        problems.append(Problem(file, f"{prefix}.owner_email", "owner_id and owner_email are both set", "keep one of them"))
    password = Secret("")
    oauth = None
    if not local:
        for key in ("host", "username"):
            if not getattr(t, key):
                problems.append(Problem(file, f"{prefix}.{key}", "no value given", f"set the IMAP {key} of mailbox {t.name!r}"))
        if t.auth == "password":
            password = secret(
                t, "password", file=file, prefix=prefix,
                env_var=_env_name("MAILBOX", t.name, "PASSWORD"), credential=t.name,
            )
        else:
            oauth = _oauth(t, file, prefix, secret, problems, ledger)
        if t.security == "none" and t.host and not t.allow_insecure and not is_loopback(t.host):
            problems.append(
                Problem(file, f"{prefix}.security", f"plaintext IMAP to {t.host} would expose the password",
                        'use security = "tls" or "starttls" (or allow_insecure = true on a trusted network)')
            )
    own = [a.strip().lower() for a in t.addresses if a.strip()]
    if not own and "@" in t.username:
        own = [t.username.lower()]
    port = t.port or (993 if t.security == "tls" else 143)
    return MailboxSettings(
        name=t.name,
        host=t.host,
        port=port,
        security=t.security,
        username=t.username,
        password=password,
        folders=tuple(t.folders),
        sent_folders=tuple(t.sent_folders) if t.sent_folders is not None else None,
        poll_interval=t.poll_interval,
        addresses=tuple(own),
        allow_insecure=t.allow_insecure,
        ca_file=_resolve(secret.base, t.ca_file),
        timeout=t.timeout,
        batch_size=t.batch_size,
        max_message_size=t.max_message_size,
        maildir=_resolve(secret.base, t.maildir),
        mbox=_resolve(secret.base, t.mbox),
        source_file=file,
        auth=t.auth,
        oauth=oauth,
        match=_match(t.match, file, f"{prefix}.match", match, problems),
        owner_id=t.owner_id,
        owner_email=t.owner_email,
        predict_deals=t.predict_deals,
    )


def _oauth(t: _MailboxTable, file: str, prefix: str, secret: _SecretReader, problems: list[Problem],
           ledger: Path | None) -> OAuthSettings:
    """The OAuth client of a mailbox that logs in with an access token (``auth`` = xoauth2 / oauthbearer).

    A refresh token the provider rotates is kept beside ``ledger`` (``oauth_state_path``).
    """
    url = t.oauth_token_url or ""
    if not url:
        problems.append(Problem(file, f"{prefix}.oauth_token_url", "no value given",
                                "set the provider's token URL (Gmail: https://oauth2.googleapis.com/token, Microsoft 365: "
                                "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token)"))
    elif url.startswith("http://") and not is_loopback(urlsplit(url).hostname or ""):
        problems.append(Problem(file, f"{prefix}.oauth_token_url", "plain http would expose the refresh token",
                                "use the provider's https:// URL"))
    if not t.oauth_client_id:
        problems.append(Problem(file, f"{prefix}.oauth_client_id", "no value given", "set the OAuth client id of your app registration"))
    client_secret, refresh_token = (
        secret(t, key, file=file, prefix=prefix, env_var=_env_name("MAILBOX", t.name, key), credential=f"{t.name}.{key}")
        for key in ("oauth_client_secret", "oauth_refresh_token")
    )
    return OAuthSettings(url, t.oauth_client_id, client_secret, refresh_token, t.oauth_scope,
                         state_file=oauth_state_path(ledger, t.name) if ledger else None)


def _metrics(raw: dict[str, Any], file: str, problems: list[Problem], env: Mapping[str, str]) -> MetricsSettings:
    """``[metrics]``; ``$SYNCD_METRICS_LISTEN`` overrides ``listen``, so ``syncd@`` instances can each take a port."""
    key = "metrics.listen"
    try:
        t = _MetricsTable.model_validate(raw)
        listen = t.listen
        if env.get(METRICS_LISTEN_ENV):
            listen, key = env[METRICS_LISTEN_ENV], f"${METRICS_LISTEN_ENV}"
        return MetricsSettings(listen=parse_listen(listen) if listen else None)
    except ValidationError as err:
        problems.extend(_problems_from(err, file, "metrics"))
    except ValueError as exc:
        problems.append(Problem(file, key, str(exc), 'write it as "127.0.0.1:9310" (or a bare port: loopback)'))
    return MetricsSettings()


def load(path: Path, env: Mapping[str, str] | None = None, only: Collection[str] = (), *,
         secrets: bool = True) -> Settings:
    """Read and validate the configuration at ``path`` (and its ``mailboxes.d``); raise ConfigError.

    ``secrets=False``: leave every secret empty and unread, for commands that only read the
    ledger (``syncd status`` from a shell, where the daemon's systemd credentials are not).

    ``only``: just these mailboxes (``syncd run --mailbox``, one per ``syncd@`` instance); the
    others are left unread, so their secrets need not be there.
    """
    env = os.environ if env is None else env
    problems: list[Problem] = []
    data = _read_toml(path, problems)
    if data is None:
        raise ConfigError(problems)
    file = str(path)
    base = path.parent
    secret = _SecretReader(base, env, problems, needed=secrets)
    try:
        main = _MainFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_problems_from(err, file, "")) from None

    crm = _crm(main.crm, file, secret, problems)
    try:
        ledger = LedgerSettings(path=_resolve(base, _LedgerTable.model_validate(main.ledger).path) or _default_ledger(env))
    except ValidationError as err:
        problems.extend(_problems_from(err, file, "ledger"))
        ledger = None

    match = _match(main.match, file, "match", MatchSettings(modules=crm.modules if crm else ("Contacts", "Leads")), problems)
    metrics = _metrics(main.metrics, file, problems, env)
    at = ledger.path if ledger else None
    mailboxes = [_mailbox(m, file, f"mailbox[{i}]", secret, problems, match, at)
                 for i, m in enumerate(main.mailbox) if _wanted(m, only)]
    for extra in sorted((base / "mailboxes.d").glob("*.toml")):
        doc = _read_toml(extra, problems)
        if doc is None:
            continue
        if set(doc) != {"mailbox"} or not isinstance(doc["mailbox"], dict):
            problems.append(Problem(str(extra), "", "must hold exactly one [mailbox] table", "move other tables to the main file"))
            continue
        if not _wanted(doc["mailbox"], only):
            continue
        mailboxes.append(_mailbox(doc["mailbox"], str(extra), "mailbox", secret, problems, match, at))

    found = [m for m in mailboxes if m is not None]
    for name in only:
        if not problems and name not in {m.name for m in found}:
            problems.append(Problem(file, "mailbox", f"no mailbox named {name!r}",
                                    f"add mailboxes.d/{name}.toml holding a [mailbox] table with name = {name!r}"))
    if not mailboxes and not only:
        problems.append(Problem(file, "mailbox", "no mailbox configured", "add a [[mailbox]] table or a file in mailboxes.d/"))
    seen: dict[str, str] = {}
    for m in found:
        if m.name in seen:
            problems.append(Problem(m.source_file, "mailbox.name", f"{m.name!r} is also defined in {seen[m.name]}", "give each mailbox its own name"))
        seen.setdefault(m.name, m.source_file)
    if problems:
        raise ConfigError(problems)
    assert crm is not None and ledger is not None
    return Settings(crm=crm, ledger=ledger, mailboxes=tuple(found), source_file=file, metrics=metrics)


def _wanted(raw: dict[str, Any], only: Collection[str]) -> bool:
    return not only or raw.get("name") in only


def _default_ledger(env: Mapping[str, str]) -> Path:
    """Under systemd's ``StateDirectory=`` (one per ``syncd@`` instance) the ledger lives there."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "ledger.sqlite3" if state else DEFAULT_LEDGER


def oauth_state_path(ledger: Path, mailbox: str) -> Path:
    """Where a mailbox's rotated OAuth refresh token is kept (syncd.source.oauth): beside the ledger, like
    its lock (``LEDGER-MAILBOX.lock``), so in ``$STATE_DIRECTORY`` under systemd; never in the ledger itself."""
    return ledger.with_name(f"{ledger.name}-{mailbox}.oauth.json")


def locate(option: str | None, env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The config path to use and whether it was asked for explicitly (``-c`` or ``$SYNCD_CONFIG``)."""
    env = os.environ if env is None else env
    if option:
        return Path(option), True
    if env.get("SYNCD_CONFIG"):
        return Path(env["SYNCD_CONFIG"]), True
    return DEFAULT_PATH, False
