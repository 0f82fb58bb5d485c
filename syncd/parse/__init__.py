"""Raw RFC 5322 bytes to an ``Email``: the one place mail's irregularities are absorbed.

``parse_message`` answers an ``Email`` for anything that has at least one header, however
broken, and raises ``ParseError`` (short reason) only for input that cannot be a message.
mail-parser is the entry point; fields are then read from the stdlib tree it exposes,
where its own views are lossy (see ``body``).
"""

from __future__ import annotations

import email
import hashlib
import logging
import re
from datetime import datetime, timezone
from email.message import Message
from email.utils import parsedate_to_datetime

import mailparser
from mailparser.exceptions import MailParserRecursionError

from syncd.email import Email
from syncd.errors import ParseError
from syncd.parse.addresses import parse_addresses
from syncd.parse.body import extract
from syncd.parse.text import decode_header, fold, from_wire, raw_values, truncate, wire_bytes

__all__ = ["parse_message", "SUBJECT_LIMIT", "FALLBACK_DATE", "SYNTHETIC_DOMAIN"]

# mail-parser warns about every part type it does not render; its view is not the one we use.
logging.getLogger("mailparser").setLevel(logging.ERROR)

SUBJECT_LIMIT = 250  # Zoho's subject field length
# Neither Date nor INTERNALDATE: a fixed instant, never "now", so reparsing gives the same Email.
FALLBACK_DATE = datetime(1970, 1, 1, tzinfo=timezone.utc)
SYNTHETIC_DOMAIN = "syncd.invalid"
# Headers the filters read; first occurrence, decoded.
FILTER_HEADERS = (
    "Auto-Submitted", "X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "Precedence",
    "List-Id", "List-Unsubscribe", "Return-Path", "Content-Type", "In-Reply-To", "References", "X-Mailer",
)
# Fields every copy of one mail shares (no Received, Delivered-To, Return-Path...).
_FINGERPRINT_HEADERS = ("From", "To", "Cc", "Date", "Subject")
_NO_ZONE = re.compile(r"-0000\s*(\(.*\))?\s*$")
_BODY_START = re.compile(rb"\r?\n\r?\n")


def parse_message(data: bytes, *, internaldate: datetime | None = None) -> Email:
    """Parse one message; ``internaldate`` (IMAP INTERNALDATE) stands in for a missing or unusable Date."""
    data = bytes(data)
    if not data.strip(b"\x00 \t\r\n"):
        raise ParseError("empty message")
    message = _tree(data)
    if message is None or not message.keys():
        raise ParseError("no headers")
    try:
        return _email(message, data, internaldate)
    except RecursionError as exc:
        raise ParseError("MIME nesting too deep") from exc
    except Exception as exc:  # a bug on one odd message must quarantine it, not stop the daemon
        raise ParseError(f"internal error: {type(exc).__name__}: {exc}") from exc


def _tree(data: bytes) -> Message | None:
    """The stdlib message tree, built through mail-parser.

    mail-parser's own post-processing fails on some damaged mails the stdlib reads fine (a
    multipart truncated before its closing boundary: AttributeError in its epilogue recovery);
    those are rebuilt by the stdlib parser mail-parser itself wraps, instead of being refused.
    """
    try:
        return mailparser.MailParser.from_bytes(data).message
    except MailParserRecursionError as exc:
        raise ParseError("MIME nesting too deep") from exc
    except Exception:  # noqa: BLE001 - any mail-parser bug: fall through to the parser it wraps
        pass
    try:
        return email.message_from_bytes(data)
    except Exception as exc:  # the stdlib parser failing as well: quarantine, never crash
        raise ParseError(f"unparseable: {type(exc).__name__}") from exc


def _email(message: Message, data: bytes, internaldate: datetime | None) -> Email:
    linesep = "\r\n" if b"\r\n" in data.split(b"\n", 1)[0] + b"\n" else "\n"
    body = extract(message, linesep)
    senders = parse_addresses(raw_values(message, "From"))
    message_id = canonical_message_id(raw_values(message, "Message-ID"))
    return Email(
        message_id=message_id or fingerprint(message, data),
        message_id_synthetic=not message_id,
        sender=senders[0] if senders else None,
        to=parse_addresses(raw_values(message, "To")),
        cc=parse_addresses(raw_values(message, "Cc")),
        bcc=parse_addresses(raw_values(message, "Bcc")),
        reply_to=parse_addresses(raw_values(message, "Reply-To")),
        subject=truncate(_first(message, "Subject"), SUBJECT_LIMIT),
        content=body.content,
        mail_format=body.mail_format,
        date_time=message_date(raw_values(message, "Date"), internaldate),
        attachments=body.attachments,
        headers={name: _first(message, name) for name in FILTER_HEADERS if raw_values(message, name)},
    )


def _first(message: Message, name: str) -> str:
    values = raw_values(message, name)
    return decode_header(values[0]) if values else ""


def canonical_message_id(values: list[str]) -> str:
    """The first Message-ID without whitespace or angle brackets, case kept on both sides of the @
    (it must equal what other tools, and Zoho's own lookup, saw); '' when there is none."""
    if not values:
        return ""
    value = re.sub(r"\s+", "", from_wire(values[0]))
    inside = re.search(r"<([^<>]*)>", value)
    return (inside.group(1) if inside else value).strip("<>")


def fingerprint(message: Message, data: bytes) -> str:
    """A stable id for a mail without Message-ID: SHA-256 over the raw From/To/Cc/Date/Subject and the
    raw body bytes (line endings normalised), so every delivered copy, and every parser version, agrees."""
    digest = hashlib.sha256()
    for name in _FINGERPRINT_HEADERS:
        for value in raw_values(message, name):
            digest.update(f"{name.lower()}:".encode() + wire_bytes(" ".join(value.split())) + b"\n")
    split = _BODY_START.search(data)
    body = data[split.end():] if split else b""
    digest.update(b"\n" + body.replace(b"\r\n", b"\n").rstrip())
    return f"{digest.hexdigest()}@{SYNTHETIC_DOMAIN}"


def message_date(values: list[str], internaldate: datetime | None) -> datetime:
    """The Date header with the sender's offset; "-0000" is UTC per RFC 5322. A missing, malformed,
    implausible or zone-less Date gives way to INTERNALDATE (a naive one is host-local time, as
    imapclient normalises it), and without that to a zone-less Date read as UTC, then to FALLBACK_DATE."""
    parsed = _parse_date(fold(values[0])) if values else None
    if parsed is not None and parsed.tzinfo is not None:
        return parsed
    if internaldate is not None:
        return internaldate if internaldate.tzinfo is not None else internaldate.astimezone()
    return parsed.replace(tzinfo=timezone.utc) if parsed is not None else FALLBACK_DATE


def _parse_date(value: str) -> datetime | None:
    """The parsed Date (naive when it has no zone), or None when it is unusable."""
    try:
        parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is None and _NO_ZONE.search(value):
            parsed = parsed.replace(tzinfo=timezone.utc)
        in_utc = parsed.replace(tzinfo=parsed.tzinfo or timezone.utc).astimezone(timezone.utc)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    return parsed if 1970 <= in_utc.year <= 9998 else None
