"""The sandbox's in-memory Zoho org: records, ZFS files, associated emails, tokens, users.

Every rule here mirrors a documented Zoho behaviour that syncd's exactly-once logic leans on:
file ids are single-use, an original_message_id is accepted once per record (then
``DUPLICATE_DATA``), tokens expire, refreshes are rate-limited, refresh tokens come from
single-use grant codes and can be revoked (with their access tokens). All methods are thread-safe.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TOKEN_LIFETIME = 3600
GRANT_CODE_LIFETIME = 180.0
"""A Self Client's grant code lives 3 minutes by default (the API console offers up to 10)."""
MAX_REFRESH_TOKENS = 20
"""Per user: the 21st refresh token deletes the first one created."""
ATTACHMENTS_LIMIT = 10 * 1024 * 1024
FILE_LIMIT = 20 * 1024 * 1024
MODULE_IDS = {
    "Leads": "4876876000000002175",
    "Accounts": "4876876000000002177",
    "Contacts": "4876876000000002179",
    "Deals": "4876876000000002181",
    "Quotes": "4876876000000002183",
    "Invoices": "4876876000000002185",
    "Sales_Orders": "4876876000000002187",
    "Purchase_Orders": "4876876000000002189",
}
"""Modules the Associate Email API supports (custom modules join when seeded)."""
STANDARD_FIELDS = {
    "Leads": ("Email", "Secondary_Email", "First_Name", "Last_Name", "Full_Name", "Company"),
    "Contacts": ("Email", "Secondary_Email", "First_Name", "Last_Name", "Full_Name", "Account_Name"),
    "Accounts": ("Account_Name", "Website", "Phone"),
    "Deals": ("Deal_Name", "Stage", "Contact_Name", "Account_Name", "Closing_Date"),
}
"""As in a fresh Zoho org: Accounts (and Deals) have no email field at all."""


class ZohoError(Exception):
    """A Zoho error answer: raised by the org, turned into an envelope by the server."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    inline: bool


@dataclass
class StoredEmail:
    """One associated email as the sandbox keeps it; ``payload`` is the ``Emails[]`` entry received."""

    module: str
    record_id: str
    message_id: str
    payload: dict[str, Any]
    linked_record: dict[str, Any] | None = None
    files: list[StoredFile] = field(default_factory=list)
    """The ZFS files the email took: its attachments, then its inline images."""

    @property
    def original_message_id(self) -> str:
        return str(self.payload["original_message_id"])


@dataclass
class Org:
    """One Zoho org. ``clock`` is injectable so token expiry can be tested without waiting."""

    client_id: str = "1000.SANDBOXCLIENT"
    client_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    refresh_token: str = field(default_factory=lambda: "1000." + secrets.token_hex(24))
    """The refresh token the org starts with (``credentials()``); more come from ``grant_code`` exchanges."""
    admin: bool = True
    refresh_limit: int = 10
    refresh_window: float = 600.0
    storage_left: int | None = None
    """Bytes of file storage left; None is unlimited. Exceeding it answers STORAGE_SPACE_EXCEEDS."""
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self.module_ids = dict(MODULE_IDS)
        self._next_id = 4876876000001000000
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.files: dict[str, StoredFile] = {}
        self.emails: dict[tuple[str, str], dict[str, StoredEmail]] = {}
        self.received: list[StoredEmail] = []
        self._tokens: dict[str, float] = {}
        self._token_origin: dict[str, str] = {}
        """Access token → the refresh token it was issued for (revoking that one revokes them)."""
        self._issued: list[str] = []
        """Refresh tokens issued for grant codes, oldest first."""
        self._revoked: set[str] = set()
        self._codes: dict[str, float] = {}
        """Grant codes not exchanged yet → when they expire."""
        self._refreshes: deque[float] = deque()
        self.users = [
            {
                "id": "4876876000000424672",
                "full_name": "Sandbox Admin" if self.admin else "Sandbox User",
                "email": "admin@sandbox.example",
                "role": {"name": "CEO", "id": "4876876000000026005"},
                "profile": {"name": "Administrator" if self.admin else "Standard", "id": "4876876000000026011"},
                "status": "active",
            },
            {
                "id": "4876876000000424690",
                "full_name": "Patricia Boyle",
                "email": "patricia@sandbox.example",
                "role": {"name": "Manager", "id": "4876876000000026008"},
                "profile": {"name": "Standard", "id": "4876876000000026014"},
                "status": "active",
            },
        ]

    def new_id(self) -> str:
        with self._lock:
            self._next_id += 1
            return str(self._next_id)

    # -- OAuth ----------------------------------------------------------------------------

    def refresh(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The token endpoint's answer: Zoho reports every failure as HTTP 200 ``{"error": ...}``.

        ``grant_type=refresh_token`` gives an access token; ``authorization_code`` exchanges a
        grant code (``grant_code``) for an access token and a new refresh token.
        """
        grant = form.get("grant_type")
        if grant not in ("refresh_token", "authorization_code"):
            return {"error": "unsupported_grant_type"}
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return {"error": "invalid_client"}
        if grant == "authorization_code":
            return self._exchange(form.get("code", ""))
        refresh_token = form.get("refresh_token", "")
        with self._lock:
            if refresh_token not in self.refresh_tokens():
                return {"error": "invalid_code"}
            now = self.clock()
            while self._refreshes and self._refreshes[0] <= now - self.refresh_window:
                self._refreshes.popleft()
            if len(self._refreshes) >= self.refresh_limit:
                return {
                    "error": "Access Denied",
                    "error_description": "You have made too many requests continuously. Please try again after some time.",
                }
            self._refreshes.append(now)
            return self._access_token(refresh_token, now)

    def _access_token(self, refresh_token: str, now: float) -> dict[str, Any]:
        token = "1000." + secrets.token_hex(32)
        self._tokens[token] = now + TOKEN_LIFETIME
        self._token_origin[token] = refresh_token
        return {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME}

    def grant_code(self, lifetime: float = GRANT_CODE_LIFETIME) -> str:
        """A grant code, as the API console's Self Client generates one: single-use, expires after ``lifetime``."""
        code = "1000." + secrets.token_hex(16) + "." + secrets.token_hex(16)
        with self._lock:
            self._codes[code] = self.clock() + lifetime
        return code

    def _exchange(self, code: str) -> dict[str, Any]:
        """A grant code for an access token and a new refresh token (the oldest beyond 20 is deleted)."""
        with self._lock:
            now = self.clock()
            if self._codes.pop(code, 0.0) <= now:
                return {"error": "invalid_code"}
            refresh_token = "1000." + secrets.token_hex(16) + "." + secrets.token_hex(16)
            self._issued.append(refresh_token)
            live = self.refresh_tokens()
            for old in live[: max(0, len(live) - MAX_REFRESH_TOKENS)]:
                self.revoke(old)
            return {**self._access_token(refresh_token, now), "refresh_token": refresh_token}

    def refresh_tokens(self) -> list[str]:
        """The refresh tokens accepted now, oldest first."""
        with self._lock:
            return [t for t in (self.refresh_token, *self._issued) if t not in self._revoked]

    def issued_refresh_tokens(self) -> list[str]:
        """Every refresh token this org ever gave out, revoked ones included (for the tests' secret scan)."""
        with self._lock:
            return [self.refresh_token, *self._issued]

    def revoke(self, token: str) -> bool:
        """Revoke a refresh token (and every access token issued for it) or one access token; False if unknown."""
        with self._lock:
            if token in self.refresh_tokens():
                self._revoked.add(token)
                gone = [a for a, origin in self._token_origin.items() if origin == token]
            elif self._tokens.get(token, 0.0) > self.clock():
                gone = [token]
            else:
                return False
            for access in gone:
                self._tokens[access] = 0.0
            return True

    def token_valid(self, token: str) -> bool:
        with self._lock:
            return self._tokens.get(token, 0.0) > self.clock()

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    # -- records --------------------------------------------------------------------------

    def seed(self, module: str, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Adds records (ids assigned when missing); returns their ids."""
        ids = []
        with self._lock:
            self.module_ids.setdefault(module, self.new_id())
            table = self.records.setdefault(module, {})
            for record in records:
                stored = dict(record)
                stored["id"] = str(stored.get("id") or self.new_id())
                table[stored["id"]] = stored
                ids.append(stored["id"])
        return ids

    def record(self, module: str, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self.records.get(module, {}).get(record_id)

    def rows(self, module: str) -> list[dict[str, Any]] | None:
        """Copies of every record of ``module``; None when the org has no such module."""
        with self._lock:
            if module not in self.module_ids:
                return None
            return [dict(r) for r in self.records.get(module, {}).values()]

    def fields(self, module: str) -> dict[str, str]:
        """The module's fields (api name → data type): its standard ones and every key its records use."""
        with self._lock:
            names = set(STANDARD_FIELDS.get(module, ())) | {k for r in self.records.get(module, {}).values() for k in r}
        names.discard("id")
        return {n: "email" if "email" in n.lower() else "text" for n in names}

    def search_email(self, module: str, address: str) -> list[dict[str, Any]]:
        """Like Zoho, loose: any email field containing the address, case-insensitively.

        So ``bob@x.com`` also finds ``jacob@x.com``: callers must filter for exact matches.
        """
        wanted = address.casefold()
        with self._lock:
            return [
                dict(r)
                for r in self.records.get(module, {}).values()
                if any("email" in k.lower() and isinstance(v, str) and wanted in v.casefold() for k, v in r.items())
            ]

    def related(self, module: str, record_id: str, related_module: str) -> list[dict[str, Any]]:
        """Records of ``related_module`` whose lookup fields point at the record (a Contact's Deals)."""
        with self._lock:
            return [
                dict(r)
                for r in self.records.get(related_module, {}).values()
                if any(isinstance(v, Mapping) and v.get("id") == record_id for v in r.values())
            ]

    # -- files ----------------------------------------------------------------------------

    def store_file(self, name: str, data: bytes, *, inline: bool) -> str:
        if len(data) > FILE_LIMIT:
            raise ZohoError(400, "FILE_SIZE_MORE_THAN_ALLOWED_SIZE", "file size should not exceed 20 MB", {"name": name})
        with self._lock:
            if self.storage_left is not None:
                if len(data) > self.storage_left:
                    raise ZohoError(400, "STORAGE_SPACE_EXCEEDS", "storage space exceeds")
                self.storage_left -= len(data)
            file_id = secrets.token_hex(32)
            self.files[file_id] = StoredFile(name, len(data), inline)
        return file_id

    # -- emails ---------------------------------------------------------------------------

    def associate(self, module: str, record_id: str, entry: Mapping[str, Any], file_ids: list[str]) -> str:
        """Stores the email, consuming its file ids; Zoho's message id, or a ZohoError."""
        with self._lock:
            if module not in self.module_ids:
                raise ZohoError(400, "INVALID_MODULE", "permission denied to access the api", {"api_name": module})
            if self.record(module, record_id) is None:
                raise ZohoError(400, "INVALID_DATA", "the id given seems to be invalid", {"id": record_id})
            owned = self.emails.setdefault((module, record_id), {})
            if str(entry["original_message_id"]) in owned:
                raise ZohoError(400, "DUPLICATE_DATA", "duplicate data", {"api_name": "original_message_id"})
            if entry.get("owner") is not None:
                self.check_owner(entry["owner"])
            linked = self._check_linked(entry.get("linked_record"))
            files = [self.files.get(f) for f in file_ids]
            if any(f is None for f in files):
                raise ZohoError(400, "INVALID_DATA", "provided file id is improper", {"api_name": "attachments"})
            if sum(f.size for f in files if f is not None) > ATTACHMENTS_LIMIT:
                raise ZohoError(400, "FILE_SIZE_EXCEEDS", "Total file(s) size should not exceed 10MB")
            for file_id in file_ids:
                del self.files[file_id]
            stored = StoredEmail(module, record_id, secrets.token_hex(32), dict(entry), linked,
                                 [f for f in files if f is not None])
            owned[stored.original_message_id] = stored
            self.received.append(stored)
            return stored.message_id

    def check_owner(self, owner: object) -> None:
        """Acting for ``owner``: anyone may act for themselves (the token's user), only an admin for others."""
        owner_id = owner.get("id") if isinstance(owner, Mapping) else None
        if not self.admin and owner_id != self.users[0]["id"]:
            raise ZohoError(403, "NO_PERMISSION", "Only Admin Role/Profile Users will have permission")
        if owner_id not in {u["id"] for u in self.users}:
            raise ZohoError(400, "INVALID_DATA", "Provide a Proper owner id", {"api_name": "owner"})

    def _check_linked(self, linked: object) -> dict[str, Any] | None:
        if not isinstance(linked, Mapping):
            return None
        module = (linked.get("module") or {}).get("api_name")
        if module not in self.module_ids or (linked.get("module") or {}).get("id") != self.module_ids[module]:
            raise ZohoError(400, "INVALID_DATA", "the api_name given seems to be invalid", {"api_name": "linked_record"})
        if self.record(module, str(linked.get("id"))) is None:
            raise ZohoError(400, "INVALID_DATA", "the parent entity id given seems to be invalid", {"api_name": "linked_record"})
        return dict(linked)

    def emails_of(self, module: str, record_id: str) -> list[StoredEmail]:
        with self._lock:
            return list(self.emails.get((module, record_id), {}).values())

    def find_original(self, original_message_id: str) -> StoredEmail | None:
        with self._lock:
            return next((e for e in self.received if e.original_message_id == original_message_id), None)

    def link(self, module: str, record_id: str, message_id: str, linked: Mapping[str, Any] | None) -> None:
        """Sets (or with None clears) the deal an existing email is linked to."""
        with self._lock:
            email = next((e for e in self.emails_of(module, record_id) if e.message_id == message_id), None)
            if email is None:
                raise ZohoError(400, "INVALID_DATA", "the message id given seems to be invalid", {"api_name": "message_id"})
            email.linked_record = self._check_linked(linked) if linked is not None else None
