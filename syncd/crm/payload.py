"""The Associate Email JSON (one ``Emails[]`` entry) for an ``Email``.

Choices where Zoho's doc and its OpenAPI spec disagree or are silent:
- ``attachments`` items are ``{"id", "name"}`` as in the doc's samples and the OAS schema
  (the doc's prose says ``file_name``).
- ``mail_format`` is sent only for HTML: the doc lists ``html`` as the only value (the OAS
  enum also has ``text``); plain text is Zoho's default.
- ``to`` is mandatory: a message without To gets its Cc (else Bcc) recipients there, so the
  list names real recipients; a message sent only to undisclosed recipients gets ``[]``.
- ``subject`` and ``content`` are mandatory and must not be empty: placeholders are used.
- ``content`` longer than CONTENT_MAX is shortened with a visible note (``shorten``), not refused.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from datetime import timezone
from typing import Any
from urllib.parse import unquote

from syncd.email import Address, Email
from syncd.errors import ParseError
from syncd.parse.text import truncate, utf16_len

NO_SUBJECT = "(no subject)"
NO_CONTENT = "\u00a0"
"""A no-break space: non-empty even after a server-side ``trim()``, invisible when shown."""
SUBJECT_MAX = 250
CONTENT_MAX = 50_000
"""Characters (UTF-16 units, as Zoho counts) of ``content`` syncd sends at most. Zoho documents no limit
for associate_email's content; the figure it documents for long text in CRM is the rich text field's
50,000 characters, HTML included (Kaizen #134, "Manipulating Rich Text Field"). Above it an email is
shortened with a note rather than risk a refusal that would quarantine it."""
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)

_IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_CID_SRC = re.compile(r"""\bsrc\s*=\s*(["']?)cid:([^"'\s>]+)\1""", re.IGNORECASE)
_CLASS_ATTR = re.compile(r"""\bclass\s*=\s*(["'])(.*?)\1""", re.IGNORECASE)


def email_payload(
    email: Email,
    *,
    sent: bool,
    attachments: Sequence[tuple[str, str]],
    inline_ids: Mapping[str, str],
    owner_id: str | None = None,
    linked_record: Mapping[str, Any] | None = None,
    left_out: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """One entry of ``{"Emails": [...]}``.

    ``attachments`` are (file name, ZFS id); ``inline_ids`` maps an inline part's content id
    to the id of its ``type=inline`` upload and only matters for HTML mail (text mail has
    no ``cid:`` references: its inline parts are uploaded as plain attachments). ``left_out``
    (name, size) are files over Zoho's 10 MB, listed in a note at the end of the content.
    """
    if email.sender is None:
        raise ParseError(f"message {email.message_id} has no From address: Zoho requires one")
    to, cc, bcc = _recipients(email)
    entry: dict[str, Any] = {
        "from": _party(email.sender),
        "to": [_party(a) for a in to],
        "subject": email.subject.strip()[:SUBJECT_MAX] or NO_SUBJECT,
        "content": _content(email, inline_ids, left_out),
        "date_time": _date_time(email),
        "sent": sent,
        "original_message_id": email.message_id,
    }
    if cc:
        entry["cc"] = [_party(a) for a in cc]
    if bcc:
        entry["bcc"] = [_party(a) for a in bcc]
    if email.mail_format == "html":
        entry["mail_format"] = "html"
    if attachments:
        entry["attachments"] = [{"id": file_id, "name": name} for name, file_id in attachments]
    if owner_id:
        entry["owner"] = {"id": owner_id}
    if linked_record:
        entry["linked_record"] = dict(linked_record)
    return entry


def _recipients(email: Email) -> tuple[tuple[Address, ...], tuple[Address, ...], tuple[Address, ...]]:
    if email.to:
        return email.to, email.cc, email.bcc
    if email.cc:
        return email.cc, (), email.bcc
    return email.bcc, (), ()


def _party(address: Address) -> dict[str, str]:
    return {"user_name": address.name or address.addr, "email": address.addr}


def _date_time(email: Email) -> str:
    """ISO 8601 with an offset and whole seconds; a naive time is taken as UTC."""
    moment = email.date_time
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.replace(microsecond=0).isoformat()


def _content(email: Email, inline_ids: Mapping[str, str], left_out: Sequence[tuple[str, int]]) -> str:
    html_mail = email.mail_format == "html"
    content = email.content
    if html_mail and inline_ids:
        content = rewrite_inline_images(content, inline_ids)
    note = _left_out_note(left_out, html_mail)
    content = shorten(content, html_mail=html_mail, limit=CONTENT_MAX - utf16_len(note)) + note
    return content if content.strip() else NO_CONTENT


def _left_out_note(left_out: Sequence[tuple[str, int]], html_mail: bool) -> str:
    if not left_out:
        return ""
    head = "[syncd] Not attached here, over Zoho's 10 MB limit (still in the mailbox):"
    lines = [f"{name} ({size:,} bytes)" for name, size in left_out]
    if html_mail:
        return f"<hr><p>{html.escape(head)}</p><ul>{''.join(f'<li>{html.escape(line)}</li>' for line in lines)}</ul>"
    return "\n\n-- \n" + head + "\n" + "\n".join(f"- {line}" for line in lines)


def shorten(content: str, *, html_mail: bool, limit: int = CONTENT_MAX) -> str:
    """``content`` within ``limit``: html comments (invisible; Outlook's are huge) go first, then the end
    of the text, never inside a tag or an entity, and a note says so at the end."""
    if utf16_len(content) <= limit:
        return content
    original = utf16_len(content)
    if html_mail:
        content = _COMMENT.sub("", content)
        if utf16_len(content) <= limit:
            return content
    head = (f"[syncd] This email's text had {original:,} characters, too many for Zoho CRM: its end is cut off "
            "here. The whole message is still in the mailbox.")
    note = f"<hr><p>{html.escape(head)}</p>" if html_mail else f"\n\n-- \n{head}"
    kept = truncate(content, limit - utf16_len(note), marker="")
    if html_mail:
        kept = _outside_markup(kept)
    return kept + note


def _outside_markup(text: str) -> str:
    """``text`` without a trailing unfinished tag (``<a hre``) or entity (``&am``)."""
    tag = text.rfind("<")
    if tag > text.rfind(">"):
        text = text[:tag]
    entity = text.rfind("&")
    if entity >= 0 and not re.search(r"[;\s<]", text[entity:]):
        text = text[:entity]
    return text


def rewrite_inline_images(content: str, inline_ids: Mapping[str, str]) -> str:
    """Point ``<img src="cid:...">`` at the uploaded images the way Zoho's editor does."""
    wanted = {_cid_key(cid): file_id for cid, file_id in inline_ids.items()}

    def rewrite_tag(tag_match: re.Match[str]) -> str:
        tag = tag_match.group(0)
        src = _CID_SRC.search(tag)
        file_id = wanted.get(_cid_key(src.group(2))) if src else None
        if src is None or file_id is None:
            return tag
        tag = tag[: src.start()] + f'src="crm/img_id:{file_id}"' + tag[src.end() :]
        return _add_class(tag, "ZCrmImage")

    return _IMG_TAG.sub(rewrite_tag, content)


def _cid_key(content_id: str) -> str:
    """Content ids compare without angle brackets, URL escapes, HTML entities or case."""
    return unquote(html.unescape(content_id)).strip().strip("<>").casefold()


def _add_class(tag: str, name: str) -> str:
    existing = _CLASS_ATTR.search(tag)
    if existing is None:
        return tag[:4] + f' class="{name}"' + tag[4:]
    classes = existing.group(2).split()
    if name in classes:
        return tag
    quote = existing.group(1)
    return tag[: existing.start()] + f"class={quote}{' '.join([*classes, name])}{quote}" + tag[existing.end() :]
