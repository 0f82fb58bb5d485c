"""The sandbox's COQL endpoint over HTTP: the subset syncd uses, checked against coql.json, with Zoho's limits."""

from __future__ import annotations

import httpx
import pytest

from syncd.sandbox import SandboxServer
from tests.sandbox.test_server import http  # noqa: F401 - the fixture


def query(http: httpx.Client, text: str) -> httpx.Response:
    return http.post("/crm/v8/coql", json={"select_query": text})


def values(n: int) -> str:
    return ", ".join(f"'v{i}@x.example'" for i in range(n))


def test_in_and_equals_match_case_insensitively(http: httpx.Client, crm_server: SandboxServer):
    """`in` and `=` compare text case-insensitively; only the selected fields and id come back."""
    answer = query(http, "SELECT Email, Last_Name FROM Contacts WHERE Email in ('bob@example.com', 'nobody@x.example')")
    assert answer.status_code == 200
    (row,) = answer.json()["data"]
    assert row == {"id": crm_server.contact_ids[0], "Email": "Bob@Example.com", "Last_Name": "Buyer"}
    assert answer.json()["info"]["more_records"] is False
    both = query(http, "select Email from Contacts where (Email = 'JACOB@example.com' or Secondary_Email = 'bob@example.com.au')")
    assert [r["id"] for r in both.json()["data"]] == [crm_server.contact_ids[1]]


def test_nothing_found_is_204(http: httpx.Client):
    """No matching row: 204 with no body, like Zoho."""
    answer = query(http, "select Email from Leads where Email in ('nobody@x.example')")
    assert answer.status_code == 204 and answer.content == b""


def test_limit_and_offset_page(http: httpx.Client, crm_server: SandboxServer):
    """limit/offset page through rows in id order and more_records says whether more remain."""
    crm_server.seed("Leads", [{"Last_Name": f"L{i}", "Email": "same@x.example"} for i in range(5)])
    first = query(http, "select Email from Leads where Email = 'same@x.example' limit 3 offset 0").json()
    rest = query(http, "select Email from Leads where Email = 'same@x.example' limit 3 offset 3").json()
    assert (len(first["data"]), first["info"]["more_records"]) == (3, True)
    assert (len(rest["data"]), rest["info"]["more_records"]) == (2, False)
    assert [int(r["id"]) for r in first["data"] + rest["data"]] == sorted(int(r["id"]) for r in first["data"] + rest["data"])


@pytest.mark.parametrize(("text", "code"), [
    (f"select Email from Contacts where Email in ({values(51)})", "LIMIT_EXCEEDED"),
    ("select Email from Contacts where Email = 'a' or Email = 'b' or Email = 'c'", "SYNTAX_ERROR"),
    ("select Email from Contacts where Email in ('a'", "SYNTAX_ERROR"),
    ("select Colour from Contacts where Email = 'a'", "INVALID_QUERY"),
    ("select Email from Contacts where Colour = 'a'", "INVALID_QUERY"),
    ("select Email from Nowhere where Email = 'a'", "INVALID_QUERY"),
    ("select Email from Contacts where Email = 'a' limit 2001", "LIMIT_EXCEEDED"),
    ("delete from Contacts", "SYNTAX_ERROR"),
])
def test_bad_queries_answer_zoho_errors(http: httpx.Client, text: str, code: str):
    """Over-long `in` lists, unbracketed criteria chains, unknown fields or modules and bad syntax: 400 with Zoho's code."""
    answer = query(http, text)
    assert (answer.status_code, answer.json()["code"]) == (400, code)


def test_body_without_select_query_breaks_the_spec(http: httpx.Client, crm_server: SandboxServer):
    """A body lacking select_query is refused as coql.json says, and recorded as a violation."""
    answer = http.post("/crm/v8/coql", json={"query": "select id from Leads"})
    assert answer.status_code == 400 and answer.json()["code"] == "MANDATORY_NOT_FOUND"
    assert crm_server.violations and crm_server.violations[-1].path == "/crm/v8/coql"


def test_field_metadata_lists_email_fields(http: httpx.Client):
    """Contacts report Email and Secondary_Email as email fields; Accounts have none, as in a fresh Zoho org."""
    def email_fields(module: str) -> set[str]:
        fields = http.get("/crm/v8/settings/fields", params={"module": module}).json()["fields"]
        return {f["api_name"] for f in fields if f["data_type"] == "email"}

    assert email_fields("Contacts") == {"Email", "Secondary_Email"}
    assert email_fields("Accounts") == set()
