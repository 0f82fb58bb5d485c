"""Zoho CRM over HTTP: the ``Crm`` protocol on one pooled, TLS-verified ``httpx.Client``.

Every httpx exception and every Zoho error answer is translated here, once, into
``syncd.errors``. Reads are retried a few times; ``associate_email`` never is, because
only the caller knows whether resending an email whose outcome is unknown is safe.
"""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx

from syncd import metrics
from syncd.crm import Associated, Deal, Record, Upload
from syncd.crm.auth import TokenManager
from syncd.crm.throttle import RateGate
from syncd.errors import CrmError, CrmOrgError, CrmOutcomeUnknown, CrmRejected, CrmTransientError
from syncd.settings import CrmSettings

FILES_PER_UPLOAD = 10
SEARCH_PAGE_SIZE = 200
SEARCH_MAX_PAGES = 10
COQL_IN_VALUES = 50
"""Zoho's limit on the values of one COQL ``in``."""
COQL_MAX_CRITERIA = 25
READ_ATTEMPTS = 4
_MAX_BACKOFF = 30.0

_TOKEN_EXPIRED = frozenset({"INVALID_TOKEN", "AUTHENTICATION_FAILURE"})
_ORG_CODES = frozenset({"OAUTH_SCOPE_MISMATCH", "NO_PERMISSION", "STORAGE_SPACE_EXCEEDS", "LICENSE_LIMIT_EXCEEDED"})
# What the operator has to change before CRM work can resume (syncd retries by itself afterwards).
_ORG_FIXES = {
    "OAUTH_SCOPE_MISMATCH": "the refresh token lacks a scope syncd needs: generate a new one with "
    "ZohoCRM.modules.emails.ALL,ZohoCRM.modules.ALL,ZohoCRM.users.READ,ZohoFiles.files.ALL "
    "(as config/syncd.toml lists) and set crm.refresh_token",
    "NO_PERMISSION": "the Zoho user of the refresh token lacks a permission (Setup > Users and Control > "
    "Profiles: module access and the Emails permissions), or use a refresh token of a user who has it",
    "STORAGE_SPACE_EXCEEDS": "the org's file storage is full: free space or buy storage "
    "(Setup > Data Administration > Storage)",
    "LICENSE_LIMIT_EXCEEDED": "the org's edition does not allow this: upgrade the Zoho CRM edition",
}
_NAME_FIELDS = ("Full_Name", "Last_Name", "Account_Name", "Deal_Name")
T = TypeVar("T")


class _ExpiredToken(Exception):
    """Internal: Zoho refused the access token; refresh and send again."""


class ZohoCrm:
    """A connected Zoho CRM org; safe to share between threads."""

    def __init__(
        self,
        settings: CrmSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._settings = settings
        self._sleep = sleep
        self._http = httpx.Client(
            transport=transport,
            verify=_tls_context(settings),
            timeout=settings.timeout,
            headers={"User-Agent": "syncd"},
        )
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self._tokens = TokenManager(settings, self._fetch_token)
        self._email_fields: dict[str, tuple[list[str], str | None]] = {}
        self._gate = RateGate(sleep=sleep)

    def __repr__(self) -> str:
        return f"ZohoCrm(client_id={self._settings.client_id!r}, api_domain={self._tokens.api_domain!r})"

    @property
    def calls(self) -> Mapping[str, int]:
        """API calls made so far, by endpoint name (a snapshot)."""
        with self._calls_lock:
            return dict(self._calls)

    # -- the Crm protocol ------------------------------------------------------------------

    def search_by_email(self, module: str, address: str) -> list[Record]:
        """Zoho's search returns candidates (any email field, loosely): keep exact matches only."""
        wanted = address.strip().casefold()
        found: list[Record] = []
        for page in range(1, SEARCH_MAX_PAGES + 1):
            params = {"email": address.strip(), "page": page, "per_page": SEARCH_PAGE_SIZE}
            answer = self._read("search", "GET", f"{module}/search", params=params)
            for item in answer.get("data") or []:
                record = _matching_record(module, item, wanted)
                if record is not None:
                    found.append(record)
            if not (answer.get("info") or {}).get("more_records"):
                break
        return found

    def find_by_emails(self, module: str, addresses: Sequence[str]) -> list[Record]:
        """One COQL query per 50 addresses over every email field of ``module``; a Record per matching field."""
        fields, name = self._fields_of(module)
        wanted = {a.strip().casefold() for a in addresses}
        found: list[Record] = []
        if not fields:
            return found
        select = ", ".join(dict.fromkeys(["id", *([name] if name else []), *fields]))
        for chunk in _chunks(list(dict.fromkeys(a.strip() for a in addresses)), COQL_IN_VALUES):
            values = ", ".join(_coql_string(v) for v in chunk)
            where = _any_of([f"{f} in ({values})" for f in fields])
            for page in range(SEARCH_MAX_PAGES):
                query = f"select {select} from {module} where {where} limit {SEARCH_PAGE_SIZE} offset {page * SEARCH_PAGE_SIZE}"
                answer = self._read("coql", "POST", "coql", json={"select_query": query})
                for item in answer.get("data") or []:
                    found.extend(_coql_records(module, item, fields, name, wanted))
                if not (answer.get("info") or {}).get("more_records"):
                    break
        return found

    def _fields_of(self, module: str) -> tuple[list[str], str | None]:
        """The module's email fields and its name field, from the field metadata (asked once per module)."""
        if module not in self._email_fields:
            answer = self._read("fields", "GET", "settings/fields", params={"module": module})
            fields = [f for f in answer.get("fields") or [] if isinstance(f, dict)]
            emails = [str(f["api_name"]) for f in fields if f.get("data_type") == "email"][:COQL_MAX_CRITERIA]
            names = {f.get("api_name") for f in fields}
            self._email_fields[module] = (emails, next((n for n in (*_NAME_FIELDS, "Name") if n in names), None))
        return self._email_fields[module]

    def upload_files(self, files: Sequence[Upload], *, inline: bool = False) -> list[str]:
        """ZFS ids in the order given; ``inline`` marks images referenced from HTML content."""
        ids: list[str] = []
        params = {"type": "inline"} if inline else None
        for chunk in _chunks(files, FILES_PER_UPLOAD):
            parts = [("file", (f.filename, f.data, f.content_type)) for f in chunk]
            answer = _json(self._call("files", "POST", "files", params=params, files=parts))
            items = answer.get("data") or []
            for item in items:
                _raise_item_error(item)
            if len(items) != len(chunk):
                raise CrmRejected(f"Zoho answered {len(items)} file ids for {len(chunk)} files", code="FILE_COUNT")
            ids.extend(str(item["details"]["id"]) for item in items)
        return ids

    def associate_email(self, module: str, record_id: str, email: Mapping[str, Any]) -> Associated:
        """Never retried here: a lost answer raises CrmOutcomeUnknown and the caller decides."""
        path = f"{module}/{record_id}/actions/associate_email"
        try:
            answer = _json(self._call("associate_email", "POST", path, json={"Emails": [dict(email)]}))
            item = (answer.get("Emails") or [{}])[0]
            _raise_item_error(item)
        except CrmRejected as exc:
            if exc.code == "DUPLICATE_DATA":
                return Associated(None, duplicate=True)
            raise
        message_id = (item.get("details") or {}).get("message_id")
        return Associated(str(message_id) if message_id else None)

    def email_available(self, module: str, record_id: str, original_message_id: str) -> bool:
        """Whether Zoho already holds this message on this record (proof of a past send).

        The spec spells the query parameter ``orginal_message_id``; that is what is sent.
        """
        params = {"orginal_message_id": original_message_id}
        answer = self._read("email_available", "GET", "actions/email_available", params=params)
        if not answer.get("available"):
            return False
        record = answer.get("record") or {}
        if not record.get("id"):
            return True
        module_name = (record.get("module") or {}).get("api_name", module)
        return str(record["id"]) == record_id and module_name == module

    # -- deals, users, link / unlink (deal prediction and `syncd link`) ------------------------

    def contact_deals(self, contact_id: str) -> list[Deal]:
        deals: list[Deal] = []
        for page in range(1, SEARCH_MAX_PAGES + 1):
            params = {"fields": "Deal_Name,Stage,Modified_Time", "page": page, "per_page": SEARCH_PAGE_SIZE}
            answer = self._read("deals", "GET", f"Contacts/{contact_id}/Deals", params=params)
            deals.extend(_deal(item) for item in answer.get("data") or [] if item.get("id"))
            if not (answer.get("info") or {}).get("more_records"):
                break
        return deals

    def stage_forecasts(self) -> dict[str, str]:
        """Both the display and the actual value of each Stage map to its forecast type."""
        answer = self._read("fields", "GET", "settings/fields", params={"module": "Deals"})
        stage = next((f for f in answer.get("fields") or [] if f.get("api_name") == "Stage"), {})
        return {
            str(value[key]): str(value.get("forecast_type") or "")
            for value in stage.get("pick_list_values") or []
            for key in ("display_value", "actual_value")
            if value.get(key)
        }

    def module_id(self, api_name: str) -> str:
        answer = self._read("modules", "GET", f"settings/modules/{api_name}")
        module = next((m for m in answer.get("modules") or [] if m.get("api_name") == api_name), None)
        if module is None or not module.get("id"):
            raise CrmRejected(f"Zoho knows no module named {api_name}", code="INVALID_MODULE")
        return str(module["id"])

    def deal(self, deal_id: str) -> Deal:
        answer = self._read("deals", "GET", f"Deals/{deal_id}")
        items = answer.get("data") or []
        if not items:
            raise CrmRejected(f"Zoho has no deal {deal_id}", code="INVALID_DATA")
        return _deal(items[0])

    def users(self, kind: str = "ActiveUsers") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in range(1, SEARCH_MAX_PAGES + 1):
            answer = self._read("users", "GET", "users", params={"type": kind, "page": page, "per_page": SEARCH_PAGE_SIZE})
            found.extend(answer.get("users") or [])
            if not (answer.get("info") or {}).get("more_records"):
                break
        return found

    def link_deal(self, contact_id: str, message_ids: Sequence[str], linked_record: Mapping[str, Any],
                  owner: Mapping[str, str]) -> dict[str, str]:
        """Link a Contact's existing emails to one deal (setting a link is idempotent: retried like a read).

        Returns Zoho's per-message error (``CODE: message``) for those it refused; {} when all were linked.
        """
        items = [{"message_id": m, "linked_record": dict(linked_record), "owner": dict(owner)} for m in message_ids]
        answer = self._read("link_record", "POST", f"Contacts/{contact_id}/Emails/actions/link_record", json={"Emails": items})
        return _item_failures(message_ids, answer.get("Emails") or [])

    def unlink_deal(self, contact_id: str, message_ids: Sequence[str], owner_id: str) -> dict[str, str]:
        """Remove the deal link of a Contact's emails (the emails stay); per-message failures as for ``link_deal``."""
        params = {"owner_id": owner_id, "message_ids": ",".join(message_ids)}
        answer = self._read("link_record", "DELETE", f"Contacts/{contact_id}/Emails/actions/link_record", params=params)
        return _item_failures(message_ids, answer.get("Emails") or [])

    def check(self) -> str:
        """Token refresh plus one cheap read, described in one line."""
        answer = self._read("users", "GET", "users", params={"type": "CurrentUser"})
        users = answer.get("users") or [{}]
        return f"Zoho CRM at {self._tokens.api_domain} as {users[0].get('email', '?')}"

    def ensure_token(self) -> None:
        """Raise CrmError unless an access token can be had (a cached one costs no call): readiness."""
        self._tokens.token()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ZohoCrm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- HTTP plumbing ---------------------------------------------------------------------

    def _read(self, name: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """An idempotent call: transient faults (even unknown outcomes) are retried with backoff."""
        attempt = 0
        while True:
            try:
                return _json(self._call(name, method, path, **kwargs))
            except CrmTransientError as exc:
                attempt += 1
                if attempt >= READ_ATTEMPTS or self._tokens.holding_failure():
                    raise
                if exc.status == 429:
                    continue  # the rate gate already holds every request back
                delay = min(_MAX_BACKOFF, 0.5 * 2**attempt)
                self._sleep(delay + random.uniform(0, delay / 2))

    def _call(self, name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; an expired token is refreshed once and the call repeated once."""
        token = self._tokens.token()
        try:
            return self._send_api(name, method, path, token, **kwargs)
        except _ExpiredToken:
            self._tokens.invalidate(token)
        token = self._tokens.token()
        try:
            return self._send_api(name, method, path, token, **kwargs)
        except _ExpiredToken:
            raise CrmOrgError("Zoho refused a freshly refreshed access token", code="INVALID_TOKEN", status=401) from None

    def _send_api(self, name: str, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        url = f"{self._tokens.api_domain}/crm/{self._settings.api_version}/{path}"
        headers = {"Authorization": f"Zoho-oauthtoken {token}"}
        response = self._send(name, method, url, headers=headers, **kwargs)
        if response.status_code < 300:
            return response
        code, message = _error_of(response)
        if response.status_code == 401 and code in _TOKEN_EXPIRED:
            raise _ExpiredToken()
        raise _classify(response, code, message)

    def _fetch_token(self, form: Mapping[str, str]) -> Mapping[str, Any]:
        url = f"{self._settings.accounts_url.rstrip('/')}/oauth/v2/token"
        response = self._send("token", "POST", url, data=dict(form))
        if response.status_code == 429 or response.status_code >= 500:
            raise _classify(response, *_error_of(response))
        try:
            answer = response.json()
        except ValueError:
            raise CrmTransientError(
                f"Zoho's token endpoint answered HTTP {response.status_code} without JSON",
                status=response.status_code,
            ) from None
        return answer if isinstance(answer, dict) else {}

    def _send(self, name: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """The only place httpx is called: its exceptions become syncd errors here."""
        self._gate.wait()
        with self._calls_lock:
            self._calls[name] += 1
        try:
            response = self._timed(name, method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise CrmOrgError(
                    f"TLS certificate of {httpx.URL(url).host} not trusted: set crm.ca_file to its CA bundle",
                    code="TLS",
                ) from None
            # Nothing was sent: resending anything is safe.
            raise CrmTransientError(f"cannot reach Zoho ({name}): {type(exc).__name__}: {exc}") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise CrmOrgError(f"bad Zoho URL for {name}: {exc} (check crm.api_domain / crm.accounts_url)") from None
        except httpx.HTTPError as exc:
            # The request (or part of it) left: Zoho may have applied it.
            raise CrmOutcomeUnknown(f"no answer from Zoho ({name}): {type(exc).__name__}: {exc}") from None
        if response.status_code == 429:
            self._gate.limited(_retry_after(response.headers.get("Retry-After")))
        else:
            self._gate.passed()
        return response

    def _timed(self, name: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, reported to the metrics: latency, HTTP status, API credits left."""
        started = time.monotonic()
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError:
            metrics.crm_unanswered(name, time.monotonic() - started)
            raise
        metrics.crm_answered(name, response.status_code, response.headers, time.monotonic() - started)
        return response


def _tls_context(settings: CrmSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.ca_file))
    return context


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _json(response: httpx.Response) -> dict[str, Any]:
    """A success body as a dict; 204 (Zoho's "nothing found") is an empty one."""
    if response.status_code == 204 or not response.content:
        return {}
    try:
        answer = response.json()
    except ValueError:
        raise CrmTransientError(
            f"Zoho answered HTTP {response.status_code} with a body that is not JSON", status=response.status_code
        ) from None
    return answer if isinstance(answer, dict) else {}


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """Zoho's (code, message) from either envelope: top-level, or the first item of a wrapped list."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        if "code" in body:
            return _code_and_message(body)
        for value in body.values():
            if isinstance(value, list) and value and isinstance(value[0], dict) and "code" in value[0]:
                return _code_and_message(value[0])
    return "", str(body)[:200]


def _code_and_message(item: Mapping[str, Any]) -> tuple[str, str]:
    message = str(item.get("message") or "")
    details = item.get("details")
    if details:
        message = f"{message} {details}".strip()
    return str(item.get("code") or ""), message


def _raise_item_error(item: Mapping[str, Any]) -> None:
    """Zoho can report a failed item inside a 2xx answer: treat it like the 400 it stands for."""
    if item.get("status") == "error":
        code, message = _code_and_message(item)
        raise _classify_code(400, code, message)


def _classify(response: httpx.Response, code: str, message: str) -> CrmError:
    status = response.status_code
    if status == 429 or code == "TOO_MANY_REQUESTS":
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return CrmTransientError(
            f"Zoho rate limit (HTTP {status} {code}): {message}", code=code, status=status, retry_after=retry_after
        )
    if status >= 500:
        return CrmTransientError(f"Zoho server error HTTP {status} {code}: {message}", code=code, status=status)
    return _classify_code(status, code, message)


def _classify_code(status: int, code: str, message: str) -> CrmError:
    text = f"Zoho answered HTTP {status} {code}: {message}"
    if status in (401, 403) or code in _ORG_CODES:
        fix = _ORG_FIXES.get(code, "check crm.client_id, crm.client_secret, crm.refresh_token and the user's access")
        return CrmOrgError(f"{text} (fix: {fix})", code=code, status=status)
    return CrmRejected(text, code=code, status=status)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _matching_record(module: str, item: Mapping[str, Any], wanted: str) -> Record | None:
    """The record if one of its email fields is exactly ``wanted`` (case-insensitively)."""
    for key, value in item.items():
        if "email" in key.lower() and isinstance(value, str) and value.strip().casefold() == wanted:
            name = next((item[k] for k in _NAME_FIELDS if isinstance(item.get(k), str) and item[k]), "")
            return Record(module=module, id=str(item.get("id", "")), name=name, email=value.strip())
    return None


def _deal(item: Mapping[str, Any]) -> Deal:
    stage = item.get("Stage")
    if isinstance(stage, Mapping):  # some API versions answer picklists as {"display_value", "actual_value"}
        stage = stage.get("actual_value") or stage.get("display_value")
    try:
        modified = datetime.fromisoformat(str(item.get("Modified_Time")))
    except ValueError:
        modified = None
    return Deal(str(item["id"]), str(item.get("Deal_Name") or ""), str(stage or ""), modified)


def _item_failures(message_ids: Sequence[str], items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Zoho answers one item per message, in order; the refused ones as message id → ``CODE: message``."""
    failures = {}
    for message_id, item in zip(message_ids, items):
        if item.get("status") != "success":
            code, message = _code_and_message(item)
            failures[message_id] = f"{code or 'error'}: {message}"
    for message_id in message_ids[len(items):]:
        failures[message_id] = "no answer for this message"
    return failures


def _coql_string(value: str) -> str:
    """A COQL string literal: single quotes, with quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _any_of(criteria: list[str]) -> str:
    """``a or b or c`` bracketed pairwise, as COQL requires beyond two criteria: ``((a or b) or c)``."""
    where = criteria[0]
    for criterion in criteria[1:]:
        where = f"({where} or {criterion})"
    return where


def _coql_records(module: str, item: Mapping[str, Any], fields: list[str], name: str | None,
                  wanted: set[str]) -> Iterator[Record]:
    for field in fields:
        value = item.get(field)
        if isinstance(value, str) and value.strip().casefold() in wanted:
            label = item.get(name) if name else ""
            yield Record(module=module, id=str(item.get("id", "")), name=label if isinstance(label, str) else "",
                         email=value.strip())
