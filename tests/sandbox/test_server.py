"""The sandbox over raw HTTP: Zoho's endpoints, envelopes, status codes and test controls."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from syncd.sandbox import SandboxServer
from syncd.sandbox.state import MODULE_IDS
from tests.fixtures.crm import exchange_code, token_form, valid_entry as entry


@pytest.fixture
def http(crm_server: SandboxServer) -> Iterator[httpx.Client]:
    """An httpx client already holding a valid token for the sandbox."""
    with httpx.Client(base_url=crm_server.url, timeout=5) as client:
        token = client.post("/oauth/v2/token", data=token_form(crm_server)).json()["access_token"]
        client.headers["Authorization"] = f"Zoho-oauthtoken {token}"
        yield client



def associate(http: httpx.Client, record_id: str, **kwargs: Any) -> httpx.Response:
    return http.post(f"/crm/v8/Contacts/{record_id}/actions/associate_email", json={"Emails": [entry(**kwargs)]})


def contact_id(server: SandboxServer) -> str:
    return server.contact_ids[0]  # type: ignore[attr-defined,no-any-return]


def test_token_answers(crm_server: SandboxServer) -> None:
    """Good refresh → token, api_domain, 3600 s; bad client / refresh token → HTTP 200 with "error"."""
    good = token_form(crm_server)
    answer = httpx.post(f"{crm_server.url}/oauth/v2/token", data=good).json()
    assert answer["api_domain"] == crm_server.url and answer["expires_in"] == 3600 and answer["token_type"] == "Bearer"
    for wrong, error in ({"refresh_token": "nope"}, "invalid_code"), ({"client_secret": "nope"}, "invalid_client"):
        response = httpx.post(f"{crm_server.url}/oauth/v2/token", data={**good, **wrong})
        assert (response.status_code, response.json()) == (200, {"error": error})


def test_grant_code_gives_a_new_refresh_token_once(crm_server: SandboxServer) -> None:
    """A grant code exchanged once gives an access token and a new refresh token that refreshes; reused or expired: invalid_code."""
    code = crm_server.grant_code()
    answer = exchange_code(crm_server, code)
    assert set(answer) == {"access_token", "refresh_token", "api_domain", "token_type", "expires_in"}
    assert answer["refresh_token"] != crm_server.credentials()[2]
    refreshed = httpx.post(f"{crm_server.url}/oauth/v2/token",
                           data={**token_form(crm_server), "refresh_token": answer["refresh_token"]}).json()
    assert "access_token" in refreshed
    assert exchange_code(crm_server, code) == {"error": "invalid_code"}
    assert exchange_code(crm_server, crm_server.org.grant_code(lifetime=0)) == {"error": "invalid_code"}
    assert crm_server.org.refresh_tokens() == [crm_server.credentials()[2], answer["refresh_token"]]


def test_revoking_a_refresh_token_revokes_its_access_tokens(crm_server: SandboxServer) -> None:
    """POST /oauth/v2/token/revoke?token=: the refresh token then gets invalid_code, its access tokens 401; unknown: 400."""
    form = token_form(crm_server)
    access = httpx.post(f"{crm_server.url}/oauth/v2/token", data=form).json()["access_token"]
    other = exchange_code(crm_server, crm_server.grant_code())  # another refresh token of the same user stays valid
    revoked = httpx.post(f"{crm_server.url}/oauth/v2/token/revoke", params={"token": form["refresh_token"]})
    assert (revoked.status_code, revoked.json()) == (200, {"status": "success"})
    assert httpx.post(f"{crm_server.url}/oauth/v2/token", data=form).json() == {"error": "invalid_code"}
    users = f"{crm_server.url}/crm/v8/users"
    denied = httpx.get(users, headers={"Authorization": f"Zoho-oauthtoken {access}"})
    assert (denied.status_code, denied.json()["code"]) == (401, "INVALID_TOKEN")
    assert httpx.get(users, headers={"Authorization": f"Zoho-oauthtoken {other['access_token']}"}).status_code == 200
    again = httpx.post(f"{crm_server.url}/oauth/v2/token/revoke", params={"token": form["refresh_token"]})
    assert again.status_code == 400


def test_the_21st_refresh_token_deletes_the_first() -> None:
    """A user holds at most 20 refresh tokens: issuing one more revokes the oldest."""
    with SandboxServer() as server:
        first = server.credentials()[2]
        issued = [exchange_code(server, server.grant_code())["refresh_token"] for _ in range(20)]
        assert server.org.refresh_tokens() == issued and first not in server.org.refresh_tokens()


def test_refresh_limit_answers_access_denied() -> None:
    """Beyond the configured refreshes per window Zoho's "Access Denied" comes back (HTTP 200)."""
    with SandboxServer(refresh_limit=2) as server:
        answers = [httpx.post(f"{server.url}/oauth/v2/token", data=token_form(server)).json() for _ in range(3)]
    assert "access_token" in answers[1] and answers[2]["error"] == "Access Denied"
    assert "too many requests" in answers[2]["error_description"]


def test_missing_and_expired_tokens(crm_server: SandboxServer, http: httpx.Client) -> None:
    """No token → 401 AUTHENTICATION_FAILURE; expired token → 401 INVALID_TOKEN (top-level envelope)."""
    bare = httpx.get(f"{crm_server.url}/crm/v8/users", params={"type": "CurrentUser"})
    assert (bare.status_code, bare.json()["code"]) == (401, "AUTHENTICATION_FAILURE")
    assert http.get("/crm/v8/users", params={"type": "CurrentUser"}).status_code == 200
    crm_server.expire_tokens()
    expired = http.get("/crm/v8/users", params={"type": "CurrentUser"})
    assert (expired.status_code, expired.json()["code"], expired.json()["status"]) == (401, "INVALID_TOKEN", "error")


def test_search_is_loose_and_204_when_empty(http: httpx.Client) -> None:
    """Email search matches any email field loosely and case-insensitively; nothing → 204, empty body."""
    found = http.get("/crm/v8/Contacts/search", params={"email": "BOB@example.com"}).json()
    assert {r["Full_Name"] for r in found["data"]} == {"Bob Buyer", "Jacob Other"}
    assert found["info"]["more_records"] is False
    none = http.get("/crm/v8/Contacts/search", params={"email": "zed@example.com"})
    assert none.status_code == 204 and none.content == b""


def test_upload_limits(http: httpx.Client) -> None:
    """Up to 10 file parts per request; more is INVALID_DATA; type=inline is remembered."""
    eleven = [("file", (f"{i}.txt", b"x", "text/plain")) for i in range(11)]
    assert http.post("/crm/v8/files", files=eleven).json()["code"] == "INVALID_DATA"
    answer = http.post("/crm/v8/files", params={"type": "inline"}, files=eleven[:2]).json()
    assert [item["details"]["name"] for item in answer["data"]] == ["0.txt", "1.txt"]
    assert all(len(item["details"]["id"]) == 64 for item in answer["data"])


def test_associate_success_and_duplicate(crm_server: SandboxServer, http: httpx.Client) -> None:
    """201 with a 64-hex message id; the same original_message_id again → 400 DUPLICATE_DATA, wrapped."""
    first = associate(http, contact_id(crm_server))
    assert first.status_code == 201
    item = first.json()["Emails"][0]
    assert item["code"] == "SUCCESS" and len(item["details"]["message_id"]) == 64
    again = associate(http, contact_id(crm_server))
    assert again.status_code == 400 and again.json()["Emails"][0]["code"] == "DUPLICATE_DATA"
    other_record = associate(http, crm_server.contact_ids[1])  # type: ignore[attr-defined]
    assert other_record.status_code == 201
    assert [e.record_id for e in crm_server.received()] == [contact_id(crm_server), crm_server.contact_ids[1]]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path_module", "extra", "status", "code", "message"),
    [
        ("Notes", {}, 400, "INVALID_MODULE", "permission denied"),
        ("Contacts", {"attachments": [{"id": "f" * 64, "name": "x"}]}, 400, "INVALID_DATA", "file id is improper"),
        ("Contacts", {"owner": {"id": "1"}}, 400, "INVALID_DATA", "owner id"),
        ("Contacts", {"linked_record": {"id": "1", "name": "x", "module": {"api_name": "Nope", "id": "2"}}}, 400, "INVALID_DATA", "api_name"),
        ("Contacts", {"linked_record": {"id": "1", "name": "x", "module": {"api_name": "Deals", "id": "2"}}}, 400, "INVALID_DATA", "api_name"),
        ("Contacts", {"linked_record": {"id": "1", "name": "x", "module": {"api_name": "Deals", "id": MODULE_IDS["Deals"]}}}, 400, "INVALID_DATA", "parent entity"),
        ("Contacts", {"sent": "no"}, 400, "INVALID_DATA", "invalid data"),
    ],
)
def test_associate_documented_errors(
    crm_server: SandboxServer, http: httpx.Client, path_module: str, extra: dict[str, Any], status: int, code: str, message: str
) -> None:
    """Each documented associate_email error comes back with its status and code, in the Emails envelope."""
    response = http.post(
        f"/crm/v8/{path_module}/{contact_id(crm_server)}/actions/associate_email", json={"Emails": [entry(**extra)]}
    )
    body = response.json()
    item = body["Emails"][0] if "Emails" in body else body
    assert (response.status_code, item["code"], item["status"]) == (status, code, "error")
    assert message in item["message"]


def test_attachment_total_over_10mb(crm_server: SandboxServer, http: httpx.Client) -> None:
    """More than 10 MB of attachments in total → FILE_SIZE_EXCEEDS, and the files stay unused."""
    files = [("file", ("a", b"x" * (6 << 20))), ("file", ("b", b"x" * (5 << 20)))]
    ids = [d["details"]["id"] for d in http.post("/crm/v8/files", files=files).json()["data"]]
    response = associate(http, contact_id(crm_server), attachments=[{"id": i, "name": "f"} for i in ids])
    assert response.json()["Emails"][0]["code"] == "FILE_SIZE_EXCEEDS"
    assert all(i in crm_server.org.files for i in ids)


def test_owner_needs_admin() -> None:
    """A non-admin user naming another user as owner gets 403 NO_PERMISSION."""
    with SandboxServer(admin=False) as server:
        (record_id,) = server.seed("Contacts", [{"Last_Name": "X", "Email": "x@example.com"}])
        token = httpx.post(f"{server.url}/oauth/v2/token", data=token_form(server)).json()["access_token"]
        response = httpx.post(
            f"{server.url}/crm/v8/Contacts/{record_id}/actions/associate_email",
            json={"Emails": [entry(owner={"id": server.org.users[1]["id"]})]},
            headers={"Authorization": f"Zoho-oauthtoken {token}"},
        )
    assert (response.status_code, response.json()["Emails"][0]["code"]) == (403, "NO_PERMISSION")


def test_emails_list_available_and_deal_linking(crm_server: SandboxServer, http: httpx.Client) -> None:
    """Associated mail is listed on the record, found by email_available, and linked/unlinked to a deal."""
    record = contact_id(crm_server)
    (deal,) = crm_server.seed("Deals", [{"Deal_Name": "Big", "Stage": "Qualification", "Contact_Name": {"id": record}}])
    message_id = associate(http, record).json()["Emails"][0]["details"]["message_id"]
    listed = http.get(f"/crm/v8/Contacts/{record}/Emails").json()["Emails"]
    assert [(e["message_id"], e["original_message_id"]) for e in listed] == [(message_id, "m1@example.com")]
    available = http.get("/crm/v8/actions/email_available", params={"orginal_message_id": "m1@example.com"}).json()
    assert available["available"] is True and available["record"]["id"] == record
    owner = crm_server.org.users[0]["id"]
    link = {"linked_record": {"module": {"api_name": "Deals", "id": MODULE_IDS["Deals"]}, "name": "Big", "id": deal}, "owner": {"id": owner}}
    linked = http.post(f"/crm/v8/Contacts/{record}/Emails/{message_id}/actions/link_record", json={"Emails": [link]})
    assert linked.json()["Emails"][0]["code"] == "SUCCESS"
    assert crm_server.received()[0].linked_record is not None
    unlinked = http.delete(
        f"/crm/v8/Contacts/{record}/Emails/actions/link_record", params={"owner_id": owner, "message_ids": message_id}
    )
    assert unlinked.json()["Emails"][0]["details"]["message_id"] == message_id
    assert crm_server.received()[0].linked_record is None


def test_deals_related_list_and_stage_metadata(crm_server: SandboxServer, http: httpx.Client) -> None:
    """A Contact's Deals (204 when none), a Deal by id, and Stage pick list values with forecast_type."""
    record = contact_id(crm_server)
    assert http.get(f"/crm/v8/Contacts/{record}/Deals").status_code == 204
    (deal,) = crm_server.seed(
        "Deals", [{"Deal_Name": "Big", "Stage": "Closed Lost", "Modified_Time": "2024-01-01T00:00:00+00:00", "Contact_Name": {"id": record}}]
    )
    assert [d["id"] for d in http.get(f"/crm/v8/Contacts/{record}/Deals").json()["data"]] == [deal]
    assert http.get(f"/crm/v8/Deals/{deal}").json()["data"][0]["Stage"] == "Closed Lost"
    fields = http.get("/crm/v8/settings/fields", params={"module": "Deals"}).json()["fields"]
    stage = next(f for f in fields if f["api_name"] == "Stage")
    kinds = {v["actual_value"]: v["forecast_type"] for v in stage["pick_list_values"]}
    assert kinds["Closed Lost"] == "Closed Lost" and kinds["Closed Won"] == "Closed Won" and kinds["Qualification"] == "Open"


def test_violations_are_recorded(crm_server: SandboxServer, http: httpx.Client) -> None:
    """A spec-breaking request is answered like Zoho and appended to violations; unknown paths are 404."""
    response = http.post(f"/crm/v8/Contacts/{contact_id(crm_server)}/actions/associate_email", json={"Emails": [{"sent": True}]})
    assert response.json()["Emails"][0]["code"] == "MANDATORY_NOT_FOUND"
    missing = http.get("/crm/v8/Contacts/1/Notes/2/actions/x")
    assert (missing.status_code, missing.json()["code"]) == (404, "INVALID_URL_PATTERN")
    assert [v.code for v in crm_server.violations] == ["MANDATORY_NOT_FOUND", "INVALID_URL_PATTERN"]


def test_injected_faults(crm_server: SandboxServer, http: httpx.Client) -> None:
    """Injected status answers apply `times` times, then the real answer comes back; resets drop the connection."""
    crm_server.inject(r"/users$", status=503, body="<html>busy</html>", times=2)
    codes = [http.get("/crm/v8/users", params={"type": "CurrentUser"}).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    crm_server.inject(r"/users$", reset_before=True)
    with pytest.raises(httpx.TransportError):
        http.get("/crm/v8/users", params={"type": "CurrentUser"})
    assert http.get("/crm/v8/users", params={"type": "CurrentUser"}).json()["users"][0]["email"] == "admin@sandbox.example"


def test_request_cut_short_by_its_client_is_never_processed(crm_server: SandboxServer) -> None:
    """A body shorter than its Content-Length (the client died mid-send) is dropped unanswered: no request, no violation."""
    host, port = crm_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /crm/v8/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"fi")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # closed without an answer once the server has seen the end
    assert crm_server.requests == [] and crm_server.violations == []
