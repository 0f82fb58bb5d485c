"""The spec validator: rejects what Zoho's specs forbid, accepts the doc's own samples."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from syncd.sandbox.validate import Violation, shared_validator

ASSOCIATE = "/crm/v8/Deals/4876876000000333267/actions/associate_email"
# The seed doc's sample input (with linked_record) and its admin/owner variant, verbatim in shape.
SAMPLE: dict[str, Any] = {
    "Emails": [
        {
            "from": {"user_name": "user1", "email": "test@zoho.com"},
            "to": [{"user_name": "user2", "email": "test1@zoho.com"}],
            "cc": [{"user_name": "user3", "email": "test2@zoho.com"}],
            "bcc": [{"user_name": "user4", "email": "test3@zoho.com"}],
            "subject": "Mail subject",
            "content": "<h3>Mail is of rich text format</h3>",
            "mail_format": "html",
            "date_time": "2018-06-12T12:12:12+05:30",
            "sent": True,
            "attachments": [{"id": "39c17f1033cd120e62f8104c545af0ef95a1bd5438fe9159ee8ff6d1bee480cd", "name": "Test File"}],
            "linked_record": {
                "id": "4876876000001355087",
                "name": "Simmons Truhlar",
                "module": {"api_name": "Contacts", "id": "4876876000000002179"},
            },
            "original_message_id": "1234534dead-asds3322w243",
        }
    ]
}
LINK = {
    "Emails": [
        {
            "message_id": "b9c24f3b403f8c3b197f2b8ab967c104d597ab1b968e3b8a59437278f4f26f77",
            "linked_record": {"module": {"api_name": "Deals", "id": "5843104000000003735"}, "name": "Travel Insurance", "id": "5843104000004382122"},
            "owner": {"name": "Patricia Boyle", "id": "5843104000000424672"},
        }
    ]
}


def check(method: str, path: str, body: object = None, **query: str) -> Violation | None:
    data = b"" if body is None else json.dumps(body).encode()
    return shared_validator().check(method, path, {k: [v] for k, v in query.items()}, "application/json", data)


def changed(**changes: object) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    for key, value in changes.items():
        if value is None:
            del body["Emails"][0][key]
        else:
            body["Emails"][0][key] = value
    return body


def test_doc_samples_are_accepted() -> None:
    """The Associate Email and Link Deal samples pass, despite the spec's placeholder email pattern."""
    assert check("POST", ASSOCIATE, SAMPLE) is None
    owner = changed(owner={"id": "4876876000001360001"}, linked_record=None, sent=False)
    assert check("POST", ASSOCIATE, owner) is None
    assert check("POST", "/crm/v8/Contacts/5843104000005878180/Emails/actions/link_record", LINK) is None


@pytest.mark.parametrize("key", ["from", "to", "subject", "content", "date_time", "sent", "original_message_id"])
def test_missing_mandatory_key(key: str) -> None:
    """Each mandatory key (doc's list, incl. subject/content the spec forgets) → MANDATORY_NOT_FOUND."""
    violation = check("POST", ASSOCIATE, changed(**{key: None}))
    assert violation is not None and violation.code == "MANDATORY_NOT_FOUND" and violation.details["api_name"] == key
    assert violation.in_body and violation.status == 400


def test_linked_record_is_optional() -> None:
    """The spec lists linked_record as required; the doc says optional, and that wins."""
    assert check("POST", ASSOCIATE, changed(linked_record=None)) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("sent", "true"), ("to", {"user_name": "a", "email": "a@b.c"}), ("subject", "x" * 251), ("date_time", "12/06/2018"), ("date_time", "2018-06-12T12:12:12")],
)
def test_wrong_types_and_formats(key: str, value: object) -> None:
    """Wrong types, over-long subject and dates without offset are INVALID_DATA."""
    violation = check("POST", ASSOCIATE, changed(**{key: value}))
    assert violation is not None and violation.code == "INVALID_DATA"


def test_bad_enum() -> None:
    """mail_format outside the enum is INVALID_DATA naming the key."""
    violation = check("POST", ASSOCIATE, changed(mail_format="rtf"))
    assert violation is not None and violation.code == "INVALID_DATA" and violation.details["api_name"] == "mail_format"


def test_unknown_path_and_wrong_method() -> None:
    """Unknown paths are INVALID_URL_PATTERN 404; a known path with the wrong method INVALID_REQUEST_METHOD."""
    for path in ("/crm/v8/Contacts/1/Notes/2/actions/nothing", "/no/crm/here"):
        violation = check("POST", path, {})
        assert violation is not None and (violation.status, violation.code) == (404, "INVALID_URL_PATTERN")
    violation = check("GET", ASSOCIATE)
    assert violation is not None and violation.code == "INVALID_REQUEST_METHOD"


def test_query_parameters() -> None:
    """Required and enum query parameters are checked; per_page and the misspelt param are not enforced."""
    assert check("GET", "/crm/v8/Contacts/search", email="a@b.c") is None
    assert check("GET", "/crm/v8/actions/email_available", orginal_message_id="x") is None
    assert check("GET", "/crm/v8/actions/email_available", original_message_id="x") is None
    missing = check("GET", "/crm/v8/actions/email_available")
    assert missing is not None and missing.code == "REQUIRED_PARAM_MISSING"
    bad_enum = check("GET", "/crm/v8/users", type="Everyone")
    assert bad_enum is not None and bad_enum.details["param"] == "type"
    assert check("GET", "/crm/v8/settings/fields") is not None
    assert check("DELETE", "/crm/v8/Contacts/1/Emails/actions/link_record", owner_id="1") is not None


def test_multipart_upload_needs_file_parts() -> None:
    """POST /files needs `file` parts; their content is not type-checked (the spec types them as objects)."""
    ok = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhi\r\n--b--\r\n'
    validator = shared_validator()
    assert validator.check("POST", "/crm/v8/files", {}, "multipart/form-data; boundary=b", ok) is None
    wrong = ok.replace(b'name="file"', b'name="upload"')
    violation = validator.check("POST", "/crm/v8/files", {}, "multipart/form-data; boundary=b", wrong)
    assert violation is not None and violation.details == {"api_name": "file"}


def test_body_that_is_not_json() -> None:
    """A body that does not parse is INVALID_DATA."""
    violation = shared_validator().check("POST", ASSOCIATE, {}, "application/json", b"{not json")
    assert violation is not None and violation.code == "INVALID_DATA"
