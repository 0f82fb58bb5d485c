"""The MIME tree to one body (html or text) and a list of attachments.

Walked by hand on the stdlib message mail-parser built, because mail-parser's own view
merges forwarded messages into the body and names unnamed parts at random.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from typing import Literal
from urllib.parse import unquote

from syncd.email import Attachment
from syncd.parse.text import decode_bytes, decode_header, fold, lenient_b64, raw_values, truncate

_BODY_TYPES = {"text/html": 2, "text/plain": 1}  # richness, for multipart/alternative
_FORWARDED = ("message/rfc822", "message/global")
# A fixed table, not ``mimetypes``: that one reads /etc/mime.types, and names must not vary by host.
_EXTENSIONS = {
    "text/plain": "txt", "text/html": "html", "text/calendar": "ics", "text/csv": "csv",
    "text/x-vcard": "vcf", "text/vcard": "vcf", "message/rfc822": "eml", "message/global": "eml",
    "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp",
    "image/svg+xml": "svg", "image/bmp": "bmp", "application/pdf": "pdf", "application/zip": "zip",
    "application/ms-tnef": "dat", "application/json": "json", "application/pkcs7-signature": "p7s",
    "application/pgp-signature": "asc", "message/delivery-status": "txt",
}
_UNSAFE_IN_NAME = re.compile(r'[\\/:*?"<>|]')
_CID_REF = re.compile(r"""cid:([^\s"'<>)]+)""", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


@dataclass
class Body:
    """What the MIME walk found: the content Zoho shows and the files that go with it."""

    content: str = ""
    mail_format: Literal["html", "text"] = "text"
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class _File:
    filename: str | None
    content_type: str
    data: bytes
    content_id: str | None
    attached: bool = False
    """Marked ``Content-Disposition: attachment``: a file the sender attached, never shown inline."""


@dataclass
class _Walker:
    linesep: str
    chunks: list[tuple[str, str]] = field(default_factory=list)  # (content type, text), in order
    files: list[_File] = field(default_factory=list)

    def walk(self, part: Message, as_file: bool = False) -> None:
        """Sort ``part`` into body chunks and files; ``as_file`` is set below an attached container."""
        ctype = part.get_content_type()
        if part.get_content_maintype() == "message" and part.is_multipart():
            self.files.append(self._message_file(part, ctype))
        elif part.is_multipart():
            children = [c for c in part.get_payload() if isinstance(c, Message)]
            as_file = as_file or part.get_content_disposition() == "attachment"
            if ctype == "multipart/alternative" and not as_file:
                children = _chosen_alternatives(children)
            for child in children:
                self.walk(child, as_file)
        elif not as_file and _is_body(part):
            data = _payload(part)
            text = decode_bytes(data, part.get_content_charset() or _meta_charset(ctype, data))
            if text.strip():  # an empty part (a truncated mail's stub) adds nothing to the body
                self.chunks.append((ctype, text.replace("\r\n", "\n")))
        else:
            attached = as_file or part.get_content_disposition() == "attachment"
            self.files.append(_File(_filename(part), ctype, _payload(part), _content_id(part), attached))

    def _message_file(self, part: Message, ctype: str) -> _File:
        """A message/* part as one file: the inner message's bytes, a forwarded mail named after its subject."""
        inner = [c for c in part.get_payload() if isinstance(c, Message)]
        data = b"".join(_serialize(message, self.linesep) for message in inner)
        name = _filename(part)
        if name is None and ctype in _FORWARDED and inner:
            subject = _UNSAFE_IN_NAME.sub("_", decode_header((raw_values(inner[0], "Subject") or [""])[0]))
            name = f"{truncate(subject, 100, marker='')}.eml" if subject else None
        return _File(name, ctype, data, _content_id(part))


def _meta_charset(ctype: str, data: bytes) -> str | None:
    """The charset an html part names in its own ``<meta>`` (HTML5 or http-equiv form) when its MIME header
    names none: what a browser would use, so syncd does too."""
    if ctype != "text/html":
        return None
    found = _META_CHARSET.search(data[:4096])
    return found.group(1).decode("ascii") if found else None


def _is_body(part: Message) -> bool:
    """Text/html or text/plain that is neither named nor marked as an attachment."""
    return (
        part.get_content_type() in _BODY_TYPES
        and part.get_content_disposition() != "attachment"
        and part.get_filename() is None
    )


def _richness(part: Message) -> int:
    """2 when ``part`` holds an html body, 1 for a text body, 0 for no (or an empty) body."""
    if part.get_content_maintype() == "message":
        return 0
    if part.is_multipart():
        return max((_richness(c) for c in part.get_payload() if isinstance(c, Message)), default=0)
    payload = part.get_payload()
    has_text = isinstance(payload, str) and bool(payload.strip())
    return _BODY_TYPES.get(part.get_content_type(), 0) if has_text and _is_body(part) else 0


def _chosen_alternatives(children: list[Message]) -> list[Message]:
    """The richest alternative (the last of equals, as RFC 2046 orders them) plus every child
    that is no body at all (an Outlook invite's text/calendar), in their original order."""
    ranks = [_richness(c) for c in children]
    best = max(ranks, default=0)
    chosen = len(ranks) - 1 - ranks[::-1].index(best) if best else -1
    return [c for i, (c, rank) in enumerate(zip(children, ranks)) if rank == 0 or i == chosen]


def _payload(part: Message) -> bytes:
    """A leaf's bytes as decoded from its transfer encoding; broken base64 yields what can be decoded
    (the stdlib would hand back the undecoded text)."""
    encoding = raw_values(part, "Content-Transfer-Encoding")
    if encoding and fold(encoding[0]).lower() == "base64":
        payload = part.get_payload()
        return lenient_b64(payload) if isinstance(payload, str) else b""
    return part.get_payload(decode=True) or b""


def _serialize(message: Message, linesep: str) -> bytes:
    """The message's bytes as parsed (headers verbatim), in the outer message's line endings."""
    buffer = io.BytesIO()
    BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0).flatten(message, linesep=linesep)
    return buffer.getvalue()


def _filename(part: Message) -> str | None:
    """The declared name (RFC 2231, RFC 2047 or raw 8-bit), without any directory a sender leaked."""
    raw = part.get_filename()
    if raw is None:
        return None
    name = decode_header(raw).replace("\\", "/").rpartition("/")[2].strip()
    return name or None


def _content_id(part: Message) -> str | None:
    values = raw_values(part, "Content-ID")
    cid = fold(values[0]).strip("<> ") if values else ""
    return cid or None


def _content(chunks: list[tuple[str, str]]) -> tuple[str, Literal["html", "text"]]:
    """One body from the chunks in order; plain chunks are escaped into html when any chunk is html."""
    if not any(ctype == "text/html" for ctype, _ in chunks):
        return "\n".join(text for _, text in chunks), "text"
    parts = [
        text if ctype == "text/html" else "<div>" + html.escape(text).replace("\n", "<br>\n") + "</div>"
        for ctype, text in chunks
    ]
    return "\n".join(parts), "html"


def _shown_unreferenced(file: _File, html_mail: bool, referenced: set[str]) -> bool:
    """An image meant for display (a Content-ID, not marked as attachment) that the html never places:
    a signature logo, say. Mail clients show such images below the text; so does syncd."""
    return (
        html_mail
        and file.content_id is not None
        and file.content_id.casefold() not in referenced
        and file.content_type.startswith("image/")
        and not file.attached
    )


def _append_html(content: str, fragment: str) -> str:
    """``fragment`` at the end of the html's body: before its last ``</body>``, else at the very end."""
    end = content.lower().rfind("</body>")
    if end < 0:
        return content + "\n" + fragment
    return content[:end] + fragment + content[end:]


def _attachment(file: _File, position: int, inline: bool) -> Attachment:
    """The public value; unnamed parts get a positional name; ``inline`` keeps the content id."""
    name = file.filename or f"attachment-{position}.{_EXTENSIONS.get(file.content_type, 'bin')}"
    return Attachment(name, file.content_type, file.data, file.content_id if inline else None)


def extract(message: Message, linesep: str) -> Body:
    """Body and attachments of a parsed message; line endings in the content become ``\\n``.

    In html mail, parts the html references by ``cid:`` are inline; so are display images it does
    not reference (``_shown_unreferenced``): they are appended below the html, where mail clients
    show them, instead of turning into attachments. Everything else is an attachment.
    """
    walker = _Walker(linesep)
    walker.walk(message)
    content, mail_format = _content(walker.chunks)
    html_mail = mail_format == "html"
    referenced = {unquote(ref).casefold() for ref in _CID_REF.findall(content)} if html_mail else set()
    files = []
    for position, file in enumerate(walker.files, start=1):
        appended = _shown_unreferenced(file, html_mail, referenced)
        if appended:
            content = _append_html(content, f'<div><img src="cid:{html.escape(file.content_id or "", quote=True)}"></div>')
            referenced.add((file.content_id or "").casefold())
        cited = file.content_id is not None and file.content_id.casefold() in referenced
        files.append(_attachment(file, position, cited))
    return Body(content, mail_format, tuple(files))
