"""The sandbox's HTTP face: Zoho's accounts and CRM endpoints on a loopback port (stdlib only).

Each request goes: fault queue (tests inject 5xx, 429, resets, slow answers) → token check
→ spec validation (failures are answered like Zoho and recorded in ``violations``) → handler.
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from syncd.sandbox import coql
from syncd.sandbox.state import Org, StoredEmail, ZohoError
from syncd.sandbox.validate import Violation, multipart_parts, shared_validator

_API = re.compile(r"^/crm/v\d+(/.*)$")
_DEFAULT_FAULT_BODIES = {
    429: {"code": "TOO_MANY_REQUESTS", "details": {}, "message": "too many requests", "status": "error"},
    500: {"code": "INTERNAL_ERROR", "details": {}, "message": "Internal Server Error", "status": "error"},
}
_DEAL_STAGES = [
    ("Qualification", "Open", 10),
    ("Needs Analysis", "Open", 20),
    ("Value Proposition", "Open", 40),
    ("Id. Decision Makers", "Open", 60),
    ("Proposal/Price Quote", "Open", 75),
    ("Negotiation/Review", "Open", 90),
    ("Closed Won", "Closed Won", 100),
    ("Closed Lost", "Closed Lost", 0),
    ("Closed-Lost to Competition", "Closed Lost", 0),
]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """What to do instead of (or around) the real answer, for the next ``times`` matching requests."""

    path: re.Pattern[str]
    method: str | None
    status: int | None
    body: Any
    headers: dict[str, str]
    times: int
    reset_before: bool
    reset_after: bool
    delay: float


Handler = Callable[..., Response]


def _zoho_error(exc: ZohoError | Violation, wrap: str | None) -> Response:
    item = {"code": exc.code, "details": dict(exc.details), "message": exc.message, "status": "error"}
    return Response(exc.status, {wrap: [item]} if wrap else item)


def _success(message: str, **details: str) -> dict[str, Any]:
    return {"code": "SUCCESS", "details": details, "message": message, "status": "success"}


def _listing(records: list[dict[str, Any]], key: str, page: int = 1, per_page: int = 200) -> Response:
    """Zoho's paged list answer; 204 with no body when there is nothing."""
    start = (page - 1) * per_page
    chunk = records[start : start + per_page]
    if not chunk:
        return Response(204)
    info = {"per_page": per_page, "count": len(chunk), "page": page, "more_records": start + per_page < len(records)}
    return Response(200, {key: chunk, "info": info})


class SandboxServer:
    """A Zoho CRM org over real HTTP on 127.0.0.1; ``start()`` returns its base URL."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admin: bool = True,
        refresh_limit: int = 10,
        refresh_window: float = 600.0,
        storage_left: int | None = None,
    ):
        self.org = Org(admin=admin, refresh_limit=refresh_limit, refresh_window=refresh_window, storage_left=storage_left)
        self.violations: list[Violation] = []
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request received, in order."""
        self.credits = 5000
        """API credits left today: one per successful API call, reported like Zoho in X-API-CREDITS-REMAINING."""
        self._address = (host, port)
        self._validator = shared_validator()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler, str | None]] = [
            ("GET", re.compile(r"/users"), self._users, None),
            ("GET", re.compile(r"/settings/fields"), self._fields, None),
            ("GET", re.compile(r"/settings/modules/(\w+)"), self._module, None),
            ("GET", re.compile(r"/actions/email_available"), self._email_available, None),
            ("POST", re.compile(r"/files"), self._files, None),
            ("GET", re.compile(r"/(\w+)/search"), self._search, None),
            ("POST", re.compile(r"/coql"), self._coql, None),
            ("POST", re.compile(r"/(\w+)/(\d+)/actions/associate_email"), self._associate, "Emails"),
            ("POST", re.compile(r"/Contacts/(\d+)/Emails(?:/(\w+))?/actions/link_record"), self._link, "Emails"),
            ("DELETE", re.compile(r"/Contacts/(\d+)/Emails(?:/(\w+))?/actions/link_record"), self._unlink, "Emails"),
            ("GET", re.compile(r"/(\w+)/(\d+)/Emails(?:/(\w+))?"), self._emails, None),
            ("GET", re.compile(r"/(\w+)/(\d+)/(\w+)"), self._related, None),
            ("GET", re.compile(r"/(\w+)/(\d+)"), self._record, None),
        ]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> str:
        handler = type("Handler", (_RequestHandler,), {"sandbox": self})
        self._httpd = ThreadingHTTPServer(self._address, handler)
        self._httpd.daemon_threads = True
        # A short poll interval keeps stop() (and so every test's teardown) fast.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="zoho-sandbox", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- test controls --------------------------------------------------------------------

    def credentials(self) -> tuple[str, str, str]:
        """(client_id, client_secret, refresh_token) this org was created with (until that token is revoked)."""
        return self.org.client_id, self.org.client_secret, self.org.refresh_token

    def grant_code(self) -> str:
        """A Self Client grant code (the API console's "Generate Code"), to exchange at the token endpoint
        with ``grant_type=authorization_code`` for a new refresh token."""
        return self.org.grant_code()

    def seed(self, module: str, records: Iterable[Mapping[str, Any]]) -> list[str]:
        return self.org.seed(module, records)

    def expire_tokens(self) -> None:
        self.org.expire_tokens()

    def received(self) -> list[StoredEmail]:
        """Every email associated so far, in order."""
        return list(self.org.received)

    def inject(
        self,
        path_regex: str,
        *,
        method: str | None = None,
        status: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        reset_before: bool = False,
        reset_after: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Make the next ``times`` requests whose path matches misbehave.

        ``status``: answer it (with ``body``, default a Zoho error) without processing;
        ``reset_before``: drop the connection without processing; ``reset_after``: process,
        then drop the connection instead of answering; ``delay``: answer late.
        """
        fault = Fault(
            re.compile(path_regex), method, status, body, dict(headers or {}), times, reset_before, reset_after, delay
        )
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Forget every injected fault not used up yet: the CRM is healthy again."""
        with self._lock:
            self._faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path.search(path) and fault.method in (None, method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- request processing ---------------------------------------------------------------

    def wait(self, seconds: float) -> None:
        """A delay that ends early when the server stops."""
        self._stopping.wait(seconds)

    def handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, request.path))
        if request.path == "/oauth/v2/token" and request.method == "POST":
            form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
            form.update({k: v[0] for k, v in request.query.items()})
            answer = self.org.refresh(form)
            if "access_token" in answer:
                answer["api_domain"] = self.url
            return Response(200, answer)
        if request.path == "/oauth/v2/token/revoke" and request.method == "POST":
            if self.org.revoke(request.arg("token")):
                return Response(200, {"status": "success"})
            return Response(400, {"status": "failure"})  # Zoho documents the 400 only, not its body
        match = _API.match(request.path)
        if match is None:
            return _zoho_error(ZohoError(404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"), None)
        auth = _authentication_error(self.org, request.headers.get("Authorization", ""))
        if auth is not None:
            return _zoho_error(auth, None)
        rel = match.group(1)
        route = next(((h, m, w) for meth, rx, h, w in self._routes if meth == request.method and (m := rx.fullmatch(rel))), None)
        wrap = route[2] if route else None
        violation = self._validator.check(
            request.method, request.path, request.query, request.headers.get("Content-Type", ""), request.body
        )
        if violation is not None:
            with self._lock:
                self.violations.append(violation)
            return _zoho_error(violation, wrap if violation.in_body else None)
        if route is None:
            return _zoho_error(ZohoError(404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"), None)
        handler, found, _ = route
        try:
            response = handler(request, *found.groups())
        except ZohoError as exc:
            return _zoho_error(exc, wrap)
        with self._lock:
            self.credits -= 1
            response.headers.setdefault("X-API-CREDITS-REMAINING", str(self.credits))
        return response

    # -- endpoints ------------------------------------------------------------------------

    def _users(self, request: Request) -> Response:
        users = self.org.users[:1] if request.arg("type") == "CurrentUser" else self.org.users
        return _listing(list(users), "users")

    def _fields(self, request: Request) -> Response:
        module = request.arg("module")
        self._require_module(module)
        fields: list[dict[str, Any]] = [
            {"api_name": name, "data_type": kind, "id": str(4876876000000003000 + i)}
            for i, (name, kind) in enumerate(sorted(self.org.fields(module).items()))
        ]
        if module == "Deals":
            values = [
                {"display_value": name, "actual_value": name, "forecast_type": kind, "probability": p, "id": str(4876876000000006801 + i), "sequence_number": i + 1}
                for i, (name, kind, p) in enumerate(_DEAL_STAGES)
            ]
            fields = [
                {"api_name": "Deal_Name", "data_type": "text", "id": "4876876000000002557"},
                {"api_name": "Stage", "data_type": "picklist", "id": "4876876000000002565", "pick_list_values": values},
            ]
        return Response(200, {"fields": fields})

    def _module(self, request: Request, api_name: str) -> Response:
        if api_name not in self.org.module_ids:
            raise ZohoError(400, "INVALID_MODULE", "the module name given seems to be invalid", {"api_name": api_name})
        module = {"api_name": api_name, "module_name": api_name, "id": self.org.module_ids[api_name], "api_supported": True}
        return Response(200, {"modules": [module]})

    def _email_available(self, request: Request) -> Response:
        original = request.arg("orginal_message_id") or request.arg("original_message_id")
        email = self.org.find_original(original)
        if email is None:
            return Response(200, {"available": False})
        record = {"module": {"api_name": email.module, "id": self.org.module_ids[email.module]}, "id": email.record_id}
        answer: dict[str, Any] = {"available": True, "record": record}
        if email.linked_record:
            answer["linked_record"] = email.linked_record
        return Response(200, answer)

    def _files(self, request: Request) -> Response:
        parts = [p for p in multipart_parts(request.headers.get("Content-Type", ""), request.body)
                 if p.get_param("name", header="content-disposition") == "file"]
        if len(parts) > 10:
            raise ZohoError(400, "INVALID_DATA", "a request can upload at most 10 files", {"limit": 10})
        inline = request.arg("type") == "inline"
        items = []
        for part in parts:
            name = part.get_filename() or "file"
            data = part.get_payload(decode=True)
            file_id = self.org.store_file(name, data if isinstance(data, bytes) else b"", inline=inline)
            items.append(_success("file uploaded successfully", name=name, id=file_id))
        return Response(200, {"data": items})

    def _search(self, request: Request, module: str) -> Response:
        if not request.arg("email"):
            raise ZohoError(400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param": "email"})
        self._require_module(module)
        found = self.org.search_email(module, request.arg("email"))
        return _listing(found, "data", int(request.arg("page", "1")), int(request.arg("per_page", "200")))

    def _require_module(self, module: str) -> None:
        if module not in self.org.module_ids:
            raise ZohoError(400, "INVALID_MODULE", "the module name given seems to be invalid", {"module": module})

    def _coql(self, request: Request) -> Response:
        rows, more = coql.run(request.json()["select_query"], self.org.rows, lambda m: set(self.org.fields(m)))
        if not rows:
            return Response(204)
        return Response(200, {"data": rows, "info": {"count": len(rows), "more_records": more}})

    def _associate(self, request: Request, module: str, record_id: str) -> Response:
        entry = request.json()["Emails"][0]
        file_ids = [str(a.get("id")) for a in entry.get("attachments") or []]
        file_ids += re.findall(r"crm/img_id:(\w+)", str(entry.get("content", "")))
        message_id = self.org.associate(module, record_id, entry, file_ids)
        return Response(201, {"Emails": [_success("Your mail has been added successfully", message_id=message_id)]})

    def _link(self, request: Request, contact_id: str, message_id: str | None) -> Response:
        items = []
        for entry in request.json()["Emails"]:
            mid = message_id or str(entry.get("message_id", ""))
            self.org.check_owner(entry["owner"])
            self.org.link("Contacts", contact_id, mid, entry["linked_record"])
            items.append(_success("email has been linked with the deal successfully", message_id=mid))
        return Response(200, {"Emails": items})

    def _unlink(self, request: Request, contact_id: str, message_id: str | None) -> Response:
        ids = [message_id] if message_id else [m for m in request.arg("message_ids").split(",") if m]
        self.org.check_owner({"id": request.arg("owner_id")})
        for mid in ids:
            self.org.link("Contacts", contact_id, mid, None)
        items = [_success("email has been unlinked from the deal successfully", message_id=mid) for mid in ids]
        return Response(200, {"Emails": items})

    def _emails(self, request: Request, module: str, record_id: str, message_id: str | None) -> Response:
        self._require_record(module, record_id)
        emails = [_email_view(e) for e in self.org.emails_of(module, record_id)]
        if message_id is not None:
            emails = [e for e in emails if e["message_id"] == message_id]
            if not emails:
                raise ZohoError(400, "INVALID_DATA", "the message id given seems to be invalid", {"api_name": "message_id"})
        if not emails:
            return Response(204)
        info = {"count": len(emails), "next_index": None, "prev_index": None, "per_page": 10, "more_records": False}
        return Response(200, {"Emails": emails, "info": info})

    def _related(self, request: Request, module: str, record_id: str, related_module: str) -> Response:
        self._require_record(module, record_id)
        found = self.org.related(module, record_id, related_module)
        return _listing(found, "data", int(request.arg("page", "1")), int(request.arg("per_page", "200")))

    def _record(self, request: Request, module: str, record_id: str) -> Response:
        return Response(200, {"data": [self._require_record(module, record_id)]})

    def _require_record(self, module: str, record_id: str) -> dict[str, Any]:
        if module not in self.org.module_ids:
            raise ZohoError(400, "INVALID_MODULE", "the module name given seems to be invalid", {"api_name": module})
        record = self.org.record(module, record_id)
        if record is None:
            raise ZohoError(400, "INVALID_DATA", "the id given seems to be invalid", {"id": record_id})
        return dict(record)


def _authentication_error(org: Org, header: str) -> ZohoError | None:
    scheme, _, token = header.partition(" ")
    if scheme != "Zoho-oauthtoken" or not token:
        return ZohoError(401, "AUTHENTICATION_FAILURE", "Authentication failed")
    if not org.token_valid(token.strip()):
        return ZohoError(401, "INVALID_TOKEN", "invalid oauth token")
    return None


def _email_view(email: StoredEmail) -> dict[str, Any]:
    """An associated email as Get Emails of a Record lists it."""
    view = {k: email.payload[k] for k in ("from", "to", "cc", "subject", "sent", "date_time") if k in email.payload}
    view.update(message_id=email.message_id, original_message_id=email.original_message_id, linked_record=email.linked_record)
    return view


class _RequestHandler(BaseHTTPRequestHandler):
    """Reads the request, lets the sandbox answer it, applies injected faults."""

    sandbox: SandboxServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: tests assert on ``requests`` and ``violations`` instead."""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client died mid-request (a killed process): Zoho never sees such a request either.
            self.close_connection = True
            return
        request = Request(self.command, url.path, parse_qs(url.query), dict(self.headers.items()), body)
        fault = self.sandbox.take_fault(request.method, request.path)
        if fault is not None and fault.delay:
            self.sandbox.wait(fault.delay)
        if fault is not None and fault.reset_before:
            return self._reset()
        if fault is not None and fault.status is not None:
            default = _DEFAULT_FAULT_BODIES.get(fault.status, _DEFAULT_FAULT_BODIES[500])
            response = Response(fault.status, default if fault.body is None else fault.body, dict(fault.headers))
        else:
            response = self.sandbox.handle(request)
        if fault is not None and fault.reset_after:
            return self._reset()
        try:
            self._write(response)
        except ConnectionError:
            # The client gave up (timeout) before a slow answer came: nothing to tell anyone.
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status == 204:
            self.end_headers()
            return
        if isinstance(response.body, (str, bytes)):
            data = response.body.encode() if isinstance(response.body, str) else response.body
            content_type = "text/html;charset=UTF-8"
        else:
            data = json.dumps(response.body).encode()
            content_type = "application/json;charset=UTF-8"
        if "Content-Type" not in response.headers:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, as a crashed proxy or a network fault would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()
        self.wfile.close()
        self.connection.close()
        self.wfile = io.BytesIO()  # http.server flushes wfile after every request: let it


def serve(host: str, port: int, seed: dict[str, list[dict[str, Any]]] | None) -> None:
    """Run a sandbox until interrupted (``syncd sandbox``); prints its URL and credentials."""
    server = SandboxServer(host=host, port=port)
    for module, records in (seed or {}).items():
        server.seed(module, records)
    url = server.start()
    client_id, client_secret, refresh_token = server.credentials()
    print(f"Zoho CRM sandbox at {url}", flush=True)
    print(f'api_domain = "{url}"\naccounts_url = "{url}"', flush=True)
    print(f'client_id = "{client_id}"\nclient_secret = "{client_secret}"\nrefresh_token = "{refresh_token}"', flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
