"""The Associate Email JSON built from an Email."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from syncd.crm.payload import NO_CONTENT, NO_SUBJECT, email_payload
from syncd.email import Address, Email
from syncd.errors import ParseError

ALICE = Address("Alice Ample", "alice@example.com")
BOB = Address("", "bob@example.org")
CAROL = Address("Carol", "carol@example.net")


def make_email(**changes: object) -> Email:
    base = Email(
        message_id="abc123@example.com",
        sender=ALICE,
        to=(BOB,),
        cc=(),
        bcc=(),
        reply_to=(),
        subject="Quote",
        content="Hello Bob",
        mail_format="text",
        date_time=datetime(2024, 3, 5, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def build(email: Email, **kwargs: object) -> dict:
    kwargs.setdefault("sent", False)
    kwargs.setdefault("attachments", [])
    kwargs.setdefault("inline_ids", {})
    return email_payload(email, **kwargs)  # type: ignore[arg-type]


def test_text_mail_has_the_mandatory_keys_and_no_empty_optionals() -> None:
    """A plain received message maps to from/to/subject/content/date_time/sent/original_message_id only."""
    entry = build(make_email())
    assert entry == {
        "from": {"user_name": "Alice Ample", "email": "alice@example.com"},
        "to": [{"user_name": "bob@example.org", "email": "bob@example.org"}],
        "subject": "Quote",
        "content": "Hello Bob",
        "date_time": "2024-03-05T09:30:15+02:00",
        "sent": False,
        "original_message_id": "abc123@example.com",
    }


def test_naive_date_is_taken_as_utc() -> None:
    """A date without offset is sent with +00:00, never without an offset."""
    entry = build(make_email(date_time=datetime(2024, 1, 1, 12, 0, 0)))
    assert entry["date_time"] == "2024-01-01T12:00:00+00:00"


def test_empty_subject_and_content_get_placeholders() -> None:
    """Zoho requires a non-empty subject and content."""
    entry = build(make_email(subject="  ", content=""))
    assert entry["subject"] == NO_SUBJECT
    assert entry["content"] == NO_CONTENT


def test_subject_is_capped_at_250() -> None:
    """The spec's maxLength holds even if the parser let a longer subject through."""
    assert len(build(make_email(subject="x" * 300))["subject"]) == 250


def test_cc_bcc_owner_linked_record_and_attachments() -> None:
    """Optional keys appear when given, attachments as {id, name} per the OAS schema."""
    linked = {"id": "42", "name": "Deal", "module": {"api_name": "Deals", "id": "7"}}
    entry = build(
        make_email(cc=(CAROL,), bcc=(ALICE,)),
        sent=True,
        attachments=[("a.pdf", "f1"), ("b.png", "f2")],
        owner_id="99",
        linked_record=linked,
    )
    assert entry["cc"] == [{"user_name": "Carol", "email": "carol@example.net"}]
    assert entry["bcc"] == [{"user_name": "Alice Ample", "email": "alice@example.com"}]
    assert entry["attachments"] == [{"id": "f1", "name": "a.pdf"}, {"id": "f2", "name": "b.png"}]
    assert entry["owner"] == {"id": "99"}
    assert entry["linked_record"] == linked
    assert entry["sent"] is True


def test_missing_to_is_filled_from_cc_then_bcc() -> None:
    """`to` is mandatory: Cc (else Bcc) recipients move there instead of being duplicated."""
    from_cc = build(make_email(to=(), cc=(CAROL,), bcc=(BOB,)))
    assert [p["email"] for p in from_cc["to"]] == ["carol@example.net"]
    assert "cc" not in from_cc and [p["email"] for p in from_cc["bcc"]] == ["bob@example.org"]
    from_bcc = build(make_email(to=(), bcc=(BOB,)))
    assert [p["email"] for p in from_bcc["to"]] == ["bob@example.org"] and "bcc" not in from_bcc
    assert build(make_email(to=()))["to"] == []


def test_message_without_sender_cannot_be_associated() -> None:
    """No From: the message is refused (quarantined), not sent with an empty from."""
    with pytest.raises(ParseError):
        build(make_email(sender=None))


def test_html_inline_images_point_at_uploaded_ids() -> None:
    """cid: sources become crm/img_id:<id> with class ZCrmImage; unknown cids are left alone."""
    content = (
        '<p>Hi</p><img src="cid:logo@x" alt="l"><IMG class="big" SRC=\'cid:%3Cpic@x%3E\'>'
        '<img src="cid:unknown@x"><img src="https://example.com/a.png">'
    )
    entry = build(
        make_email(mail_format="html", content=content),
        inline_ids={"<logo@x>": "id1", "pic@x": "id2"},
    )
    assert entry["mail_format"] == "html"
    assert entry["content"] == (
        '<p>Hi</p><img class="ZCrmImage" src="crm/img_id:id1" alt="l">'
        '<IMG class="big ZCrmImage" src="crm/img_id:id2">'
        '<img src="cid:unknown@x"><img src="https://example.com/a.png">'
    )


def test_text_mail_content_is_not_rewritten() -> None:
    """Text mail has no cid: references to rewrite and no mail_format key."""
    entry = build(make_email(content="see cid:logo@x"), inline_ids={"logo@x": "id1"})
    assert entry["content"] == "see cid:logo@x"
    assert "mail_format" not in entry
