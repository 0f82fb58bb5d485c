"""syncd.parse: sample mails field by field, stability, and no exception but ParseError, ever."""

from __future__ import annotations

import base64
import email
import importlib.util
import unicodedata
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.email import Address, Email
from syncd.errors import ParseError
from syncd.parse import FALLBACK_DATE, SUBJECT_LIMIT, parse_message

MAIL = Path(__file__).parent / "data" / "mail"
SAMPLES = sorted(MAIL.glob("*.eml"))
INTERNALDATE = datetime(2024, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))


def raw(name: str) -> bytes:
    return (MAIL / name).read_bytes()


def parse(name: str, **kwargs) -> Email:
    return parse_message(raw(name), **kwargs)


def stdlib(name: str) -> EmailMessage:
    """The same bytes as Python's own modern parser reads them, for independent comparison."""
    return email.message_from_bytes(raw(name), policy=policy.default)


def mime(headers: str, body: str = "x\n") -> bytes:
    return (headers.strip("\n") + "\n\n" + body).replace("\n", "\r\n").encode("utf-8")


# --- plain fields ----------------------------------------------------------------------------


def test_plain_ascii_fields():
    """A plain ASCII mail yields its id, addresses, subject, offset-keeping date and text body."""
    mail = parse("plain.eml")
    assert mail.message_id == "plain-1@example.com" and not mail.message_id_synthetic
    assert mail.sender == Address("Alice Example", "alice@example.com")
    assert mail.to == (Address("Bob", "bob@example.org"),)
    assert mail.cc == mail.bcc == mail.reply_to == ()
    assert mail.subject == "Hello there"
    assert mail.date_time == datetime(2024, 1, 2, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    assert mail.date_time.utcoffset() == timedelta(hours=1)
    assert (mail.mail_format, mail.content) == ("text", "Hello Bob,\nsee you tomorrow.\n")
    assert mail.attachments == ()


CHARSETS = {
    "iso-8859-2": ("Zażółć gęślą jaźń", "Łukasz Wiśniewski"),
    "windows-1251": ("Привет, мир", "Иван Петров"),
    "windows-1252": ("Café “quotes” cost 5 €", "José Müller"),
    "shift_jis": ("会議の件について", "山田太郎"),
    "iso-2022-jp": ("お見積りのご送付", "鈴木花子"),
    "koi8-r": ("Отчёт за квартал", "Сергей Иванов"),
    "gb2312": ("关于合同的问题 €", "王小明"),
    "utf-8": ("Grüße aus Köln 👋", "Zoë Ærø"),
    "gb18030": ("付款 𠀀 𪚥 €", "张伟"),
    "iso-8859-15": ("Prix : 5 € - œuvre", "Zoë Œuvre"),
    "windows-1250": ("Příliš žluťoučký kůň", "Jiří Novák"),
}


@pytest.mark.parametrize("charset", CHARSETS)
def test_charset_body_subject_and_name(charset):
    """Body, encoded-word subject and sender name decode correctly in each common charset (gb2312 as GB18030)."""
    text, name = CHARSETS[charset]
    mail = parse(f"charset-{charset}.eml")
    assert mail.subject == text
    assert mail.sender == Address(name, "sender@example.com")
    assert mail.content == f"{text}\n{name}\n"


@pytest.mark.parametrize("charset", ["iso-8859-2", "windows-1251", "koi8-r", "utf-8", "iso-2022-jp"])
def test_charset_agrees_with_stdlib(charset):
    """Where the stdlib decodes a charset itself, our subject and body agree with it."""
    message = stdlib(f"charset-{charset}.eml")
    mail = parse(f"charset-{charset}.eml")
    assert mail.subject == str(message["subject"])
    assert mail.content == message.get_content().replace("\r\n", "\n")


def test_html_charset_from_its_meta_tag():
    """An html part whose MIME header names no charset is decoded by the one its <meta> names, as a browser would."""
    mail = parse("html-meta-charset.eml")
    assert (mail.mail_format, mail.subject) == ("html", "Счёт")
    assert "<p>Здравствуйте, Иван!</p><p>Счёт во вложении.</p>" in mail.content


def test_unknown_charset_in_subject_falls_back():
    """An encoded word in an unknown charset or with broken base64 still gives readable text."""
    data = mime("From: a@example.com\nSubject: =?x-bogus?Q?caf=C3=A9?= =?utf-8?B?!!SGk?= end")
    assert parse_message(data).subject == "caféHi end"  # RFC 2047: space between words is dropped


def test_undeclared_8bit_utf8():
    """Undeclared 8-bit headers and body are read as UTF-8."""
    mail = parse("undeclared-8bit.eml")
    assert (mail.subject, mail.sender.name, mail.content) == ("Grüße", "Zoë", "Grüße, Zoë\n")


def test_undeclared_8bit_windows1252():
    """Undeclared 8-bit text that is not UTF-8 falls back to windows-1252 (curly quotes survive)."""
    assert parse("undeclared-latin1.eml").content == "Café “ok”\n"


# --- bodies ------------------------------------------------------------------------------------


def test_alternative_prefers_html():
    """multipart/alternative gives the html part, decoded from quoted-printable."""
    mail = parse("alternative.eml")
    assert (mail.mail_format, mail.content) == ("html", "<p>HTML version ✓</p>")
    assert mail.content == stdlib("alternative.eml").get_body(("html",)).get_content().rstrip("\r\n")


def test_mixed_text_parts_are_concatenated():
    """Several text parts of a multipart/mixed are joined in order; the picture between is an attachment."""
    mail = parse("mixed-text-parts.eml")
    assert (mail.mail_format, mail.content) == ("text", "Before the picture.\nAfter the picture.")
    assert [a.filename for a in mail.attachments] == ["photo.png"]


def test_mixed_html_and_text_become_html():
    """A text part next to an html part is escaped into the html body, in order."""
    data = mime(
        'From: a@example.com\nContent-Type: multipart/mixed; boundary="b"',
        "--b\nContent-Type: text/html\n\n<p>one</p>\n--b\nContent-Type: text/plain\n\na < b\nc\n--b--\n",
    )
    mail = parse_message(data)
    assert mail.mail_format == "html"
    assert mail.content == "<p>one</p>\n<div>a &lt; b<br>\nc</div>"


def test_deeply_nested_multipart():
    """Text and attachments twelve multipart levels deep are still found."""
    mail = parse("nested.eml")
    assert mail.content == "Deep text"
    assert [(a.filename, a.data) for a in mail.attachments] == [("deep.csv", b"a,b")]


def test_truncated_multipart_still_parses():
    """A multipart cut off before its closing boundary (mail-parser itself fails on it) still gives an Email."""
    data = mime(
        'From: a@example.com\nContent-Type: multipart/alternative; boundary="b1"',
        '--b1\nContent-Type: text/plain\n\nkept\n--b1\nContent-Type: multipart/related; boundary="b2"\n\n--b2\n',
    )
    assert parse_message(data).content == "kept"


def test_no_body_gives_empty_text():
    """A message whose only part is a file has an empty text body and that file as attachment."""
    data = mime("From: a@example.com\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64", "JVBERi0=\n")
    mail = parse_message(data)
    assert (mail.content, mail.mail_format) == ("", "text")
    assert [(a.filename, a.data) for a in mail.attachments] == [("attachment-1.pdf", b"%PDF-")]


# --- attachments -------------------------------------------------------------------------------


def test_inline_image_referenced_by_cid():
    """An image the html references as cid: is inline, its Content-ID without angle brackets."""
    mail = parse("inline-cid.eml")
    (image,) = mail.attachments
    assert (image.filename, image.content_type, image.content_id, image.inline) == (
        "chart.png", "image/png", "chart.png@01D9", True,
    )
    expected = next(p for p in stdlib("inline-cid.eml").walk() if p.get_content_type() == "image/png")
    assert image.data == expected.get_content()


def test_unreferenced_inline_image_stays_inline_below_the_html():
    """A display image the html never references (a signature logo) stays inline, placed below the html."""
    mail = parse("inline-logo-unreferenced.eml")
    used, logo = mail.attachments
    assert (used.filename, used.content_id) == ("attachment-1.png", "used@x")
    assert (logo.filename, logo.content_id, logo.inline) == ("attachment-2.png", "logo@x", True)
    assert logo.data.startswith(b"\x89PNG")
    assert mail.content.endswith('<div><img src="cid:logo@x"></div>')


def test_attached_or_text_mail_images_stay_attachments():
    """An image marked as attachment, or any image of a text-only mail, is an attachment even with a Content-ID."""
    attached = mime(
        'Content-Type: multipart/mixed; boundary="b"',
        '--b\nContent-Type: text/html\n\n<p>Hi</p>\n--b\nContent-Type: image/png\nContent-ID: <a@x>\n'
        'Content-Disposition: attachment; filename="chart.png"\n\npng\n--b--\n',
    )
    (chart,) = parse_message(attached).attachments
    assert (chart.filename, chart.inline) == ("chart.png", False)
    text = attached.replace(b"text/html", b"text/plain")
    text = text.replace(b"Content-Disposition: attachment; filename=\"chart.png\"\r\n", b"")
    (image,) = parse_message(text).attachments
    assert (image.inline, parse_message(text).mail_format) == (False, "text")


def test_encoded_filenames():
    """RFC 2231 (UTF-8, continuations, latin-1) and RFC 2047 filenames are decoded."""
    mail = parse("rfc2231-filename.eml")
    assert [a.filename for a in mail.attachments] == ["Rechnung März€.pdf", "été-report.txt", "äöü.zip"]
    assert mail.attachments[0].filename == next(stdlib("rfc2231-filename.eml").iter_attachments()).get_filename()
    assert [a.data for a in mail.attachments] == [b"%PDF-1.4\n", b"a=b", b"zip"]


def test_unnamed_attachments_get_positional_names():
    """Attachments without a filename are named attachment-<position>.<extension of their type>."""
    mail = parse("no-filename.eml")
    assert [(a.filename, a.content_type) for a in mail.attachments] == [
        ("attachment-1.pdf", "application/pdf"),
        ("attachment-2.bin", "application/x-weird-thing"),
    ]


def test_filename_directories_are_dropped():
    """A sender's leaked path (C:\\...\\file) is reduced to the file's own name."""
    data = mime(
        'From: a@example.com\nContent-Type: multipart/mixed; boundary="b"',
        '--b\nContent-Type: text/plain\nContent-Disposition: attachment; filename="C:\\\\tmp\\\\x.txt"\n\nx\n--b--\n',
    )
    assert parse_message(data).attachments[0].filename == "x.txt"


def test_forwarded_message_is_an_eml_attachment():
    """A message/rfc822 part is not merged into the body: it becomes <subject>.eml holding the inner mail."""
    mail = parse("forwarded.eml")
    assert mail.content == "Forwarding this."
    (forwarded,) = mail.attachments
    assert (forwarded.filename, forwarded.content_type) == ("Quarterly numbers_ Q1_Q2.eml", "message/rfc822")
    inner = parse_message(forwarded.data)
    assert (inner.message_id, inner.content) == ("inner-1@example.net", "Inner text that must not be merged.")
    assert b"\r\n" in forwarded.data and b"\n" not in forwarded.data.replace(b"\r\n", b"")


def test_forwarded_message_without_subject_gets_positional_name():
    """A forwarded message without a subject is named like any unnamed part, with .eml."""
    data = mime(
        'From: a@example.com\nContent-Type: multipart/mixed; boundary="b"',
        "--b\nContent-Type: text/plain\n\nfyi\n--b\nContent-Type: message/rfc822\n\nFrom: c@example.net\n\ninner\n--b--\n",
    )
    assert [a.filename for a in parse_message(data).attachments] == ["attachment-1.eml"]


def test_calendar_invite_is_an_ics_attachment():
    """An invite's text/calendar alternative becomes an .ics attachment while html stays the body."""
    mail = parse("calendar.eml")
    assert (mail.mail_format, mail.content) == ("html", "<p>You are invited.</p>")
    (invite,) = mail.attachments
    assert (invite.filename, invite.content_type) == ("attachment-1.ics", "text/calendar")
    assert invite.data.startswith(b"BEGIN:VCALENDAR")


def test_winmail_dat_kept_as_is():
    """winmail.dat (application/ms-tnef) is kept, name and bytes unchanged."""
    (tnef,) = parse("winmail.eml").attachments
    assert (tnef.filename, tnef.content_type, tnef.data) == ("winmail.dat", "application/ms-tnef", b"\x78\x9f\x3e\x22tnef-data")


def test_broken_base64_decodes_what_it_can():
    """Broken base64 (stray characters, bad padding, dangling bits) decodes what it can, no crash."""
    mail = parse("broken-base64.eml")
    assert mail.content == "Hello world"
    assert mail.attachments[0].data == bytes(range(9))


# --- message id ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a.B@Example.COM>", "a.B@Example.COM"),
        ("   <a@b>   ", "a@b"),
        ("a@b", "a@b"),
        ("<a@b> (added by relay)", "a@b"),
        ("<a\n @b>", "a@b"),
        ("<<a@b>>", "a@b"),
    ],
)
def test_message_id_canonical_form(value, expected):
    """Message-ID loses whitespace and angle brackets; case is kept on both sides of the @."""
    assert parse_message(mime(f"From: a@example.com\nMessage-ID: {value}")).message_id == expected


def test_message_id_first_of_repeated():
    """With spaces inside brackets and a second Message-ID header, the first one wins, stripped."""
    assert parse("message-id-spaces.eml").message_id == "Part.One@Example.COM"


@pytest.mark.parametrize("headers", ["From: a@example.com", "From: a@example.com\nMessage-ID: <>", "From: a@example.com\nMessage-ID:  "])
def test_missing_or_empty_message_id_is_synthetic(headers):
    """A missing or empty Message-ID becomes <sha256>@syncd.invalid, flagged synthetic."""
    mail = parse_message(mime(headers))
    local, _, domain = mail.message_id.partition("@")
    assert mail.message_id_synthetic and domain == "syncd.invalid" and len(local) == 64
    int(local, 16)


def test_synthetic_id_ignores_delivery_headers():
    """Two copies differing only in Received/Return-Path/Delivered-To and line endings share the synthetic id."""
    data = raw("no-message-id.eml")
    copy = b"Received: from elsewhere by mx9; Wed, 03 Jan 2024 00:00:00 +0000\r\nDelivered-To: bob@example.org\r\n" + data.replace(
        b"Return-Path: <alice@example.com>\r\n", b""
    ).replace(b"mx1.example.org", b"mx7.example.org")
    first, second = parse_message(data), parse_message(copy.replace(b"\r\n", b"\n"))
    assert first.message_id_synthetic and first.message_id == second.message_id


def test_synthetic_id_depends_on_content():
    """A different body or subject gives a different synthetic id."""
    data = raw("no-message-id.eml")
    ids = {parse_message(d).message_id for d in (data, data.replace(b"Body", b"body"), data.replace(b"No id", b"An id"))}
    assert len(ids) == 3


# --- dates --------------------------------------------------------------------------------------


def test_date_keeps_sender_offset():
    """The Date header's own offset is kept, not converted."""
    mail = parse_message(mime("From: a@example.com\nDate: Tue, 2 Jan 2024 18:00:00 +0530"))
    assert mail.date_time.isoformat() == "2024-01-02T18:00:00+05:30"


def test_minus_zero_zone_is_utc():
    """A Date in -0000 (RFC 5322: UTC, local zone unknown) is UTC, not zone-less."""
    mail = parse_message(mime("From: a@example.com\nDate: Tue, 2 Jan 2024 18:00:00 -0000"), internaldate=INTERNALDATE)
    assert mail.date_time == datetime(2024, 1, 2, 18, tzinfo=timezone.utc)


@pytest.mark.parametrize("name", ["no-date.eml", "bad-date.eml", "zoneless-date.eml"])
def test_unusable_date_falls_back_to_internaldate(name):
    """A missing, malformed or zone-less Date gives way to INTERNALDATE."""
    assert parse(name, internaldate=INTERNALDATE).date_time == INTERNALDATE


def test_zoneless_date_without_internaldate_is_utc():
    """Without INTERNALDATE a zone-less Date's wall clock is read as UTC."""
    assert parse("zoneless-date.eml").date_time == datetime(2024, 1, 2, 9, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("name", ["no-date.eml", "bad-date.eml"])
def test_no_date_at_all_is_fixed_fallback(name):
    """Without a usable Date or INTERNALDATE the date is the fixed epoch, never now."""
    assert parse(name).date_time == FALLBACK_DATE


def test_naive_internaldate_is_local_time():
    """A naive INTERNALDATE (imapclient's normalised form) is taken as host-local time, made aware."""
    naive = datetime(2024, 3, 4, 5, 6, 7)
    assert parse("no-date.eml", internaldate=naive).date_time == naive.astimezone()


def test_implausible_date_falls_back():
    """A Date before 1970 is treated as malformed."""
    mail = parse_message(mime("From: a@example.com\nDate: Mon, 1 Jan 1900 00:00:00 +0100"), internaldate=INTERNALDATE)
    assert mail.date_time == INTERNALDATE


# --- subject ------------------------------------------------------------------------------------


def test_long_subject_cut_on_character_boundary():
    """A 300-character multibyte subject is cut to 250 UTF-16 units with an ellipsis, no cluster split."""
    full = str(stdlib("long-subject.eml")["subject"])
    subject = parse("long-subject.eml").subject
    assert len(full) == 300
    assert subject.endswith("…") and len(subject.encode("utf-16-le")) // 2 <= SUBJECT_LIMIT
    kept = subject[:-1]
    assert full.startswith(kept)
    assert not unicodedata.combining(full[len(kept)]) and full[len(kept)] not in "\U0001f3fd\u200d"


def test_subject_folded_to_one_line():
    """A folded subject with tabs and CR/LF becomes one line with single spaces."""
    mail = parse_message(mime("From: a@example.com\nSubject: one\n\t two\n   three\x07"))
    assert mail.subject == "one two three"


def test_short_subject_untouched():
    """A subject within the limit is not cut and gets no ellipsis."""
    subject = "é" * SUBJECT_LIMIT
    assert parse_message(mime(f"From: a@example.com\nSubject: {subject}")).subject == subject


# --- addresses ----------------------------------------------------------------------------------


def test_group_syntax_and_invalid_entries():
    """Groups are flattened, empty groups and invalid entries dropped, duplicates in one header removed."""
    mail = parse("group.eml")
    assert mail.to == (Address("", "dev1@example.org"), Address("Dev, Two", "dev2@example.org"))
    assert mail.cc == (Address("", "dev1@example.org"),)
    expected = [a.addr_spec for a in stdlib("group.eml")["to"].addresses]
    assert [a.addr for a in mail.to] == expected


def test_idn_domains_canonical():
    """Punycode and Unicode spellings of a domain both become lower-case Unicode; the local part keeps case."""
    mail = parse("idn.eml")
    assert mail.sender == Address("Jörg", "Joerg@müller.de")
    assert mail.to == (Address("", "info@bücher.example"),)


def test_repeated_headers():
    """Repeated address headers are merged; Subject and filter headers take the first occurrence."""
    mail = parse("repeated-headers.eml")
    assert [a.addr for a in mail.to] == ["bob@example.org", "carol@example.net"]
    assert mail.subject == "First subject"
    assert mail.headers == {
        "Auto-Submitted": "auto-replied",
        "Precedence": "bulk",
        "List-Id": "Sales <sales.example.com>",
        "X-Mailer": "Mäiler 1.0",
    }


def test_filter_headers_decoded():
    """Every header filters read is present, decoded, case-insensitively reachable; Received is not kept."""
    names = [
        "Auto-Submitted", "X-Autoreply", "X-Autorespond", "Precedence", "List-Id", "List-Unsubscribe",
        "Return-Path", "Content-Type", "In-Reply-To", "References", "X-Mailer",
    ]
    data = mime("From: a@example.com\nReceived: by mx\n" + "\n".join(f"{n.lower()}: v-{n}" for n in names))
    mail = parse_message(data)
    assert all(mail.header(n) == f"v-{n}" for n in names)
    assert mail.header("Received") == ""


def test_no_from_means_no_sender():
    """Without a usable From the sender is None; Bcc and Reply-To are read."""
    mail = parse_message(mime("From: not an address\nBcc: b@example.com\nReply-To: R <r@example.com>"))
    assert mail.sender is None
    assert (mail.bcc, mail.reply_to) == ((Address("", "b@example.com"),), (Address("R", "r@example.com"),))


# --- stability and refusal ----------------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_parsing_is_stable(path):
    """The same bytes parse to an identical Email, attachment names and synthetic ids included."""
    data = path.read_bytes()
    assert parse_message(data, internaldate=INTERNALDATE) == parse_message(data, internaldate=INTERNALDATE)


@pytest.mark.parametrize("data", [b"", b"\x00" * 64, b" \r\n\t\r\n", b"\r\n\r\nbody only"])
def test_empty_input_is_refused(data):
    """Empty, NUL-only, blank or header-less input raises ParseError."""
    with pytest.raises(ParseError):
        parse_message(data)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", bytes(range(256)), b"just some words\nno colon"])
def test_garbage_is_refused(data):
    """Bytes without a single header are not a message: ParseError."""
    with pytest.raises(ParseError):
        parse_message(data)


# --- properties ---------------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_CHARSETS = st.sampled_from(["utf-8", "iso-8859-1", "shift_jis", "gb2312", "koi8-r", "bogus", "utf-7"])
_CTES = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "bogus"])


@st.composite
def _leaf(draw) -> str:
    ctype = draw(st.sampled_from(["text/plain", "text/html", "image/png", "text/calendar", "message/rfc822", "application/x"]))
    cte = draw(_CTES)
    disposition = draw(st.sampled_from(["", "Content-Disposition: attachment\n", "Content-Disposition: inline; filename*=utf-8''%E2%82%AC.x\n"]))
    cid = draw(st.sampled_from(["", "Content-ID: <c@x>\n"]))
    body = draw(_TEXT)
    if ctype == "message/rfc822":
        body = f"Subject: {draw(_TEXT)}\n\n{body}"
    return f"Content-Type: {ctype}; charset={draw(_CHARSETS)}\nContent-Transfer-Encoding: {cte}\n{disposition}{cid}\n{body}\n"


def _tree(depth: int):
    if depth == 0:
        return _leaf()
    sub = st.sampled_from(["mixed", "alternative", "related", "signed", "digest"])
    return st.one_of(
        _leaf(),
        st.tuples(sub, st.lists(_tree(depth - 1), min_size=0, max_size=3), st.integers(0, 99)).map(
            lambda t: f'Content-Type: multipart/{t[0]}; boundary="b{depth}{t[2]}"\n\n'
            + "".join(f"--b{depth}{t[2]}\n{child}" for child in t[1])
            + f"--b{depth}{t[2]}--\n"
        ),
    )


@st.composite
def _messages(draw) -> bytes:
    headers = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "X-Mailer"]),
                st.one_of(_TEXT, st.sampled_from(["=?utf-8?B?w6k?=", "=?bogus?Q?x?=", "a@b, (c) <d@e>;", "g: h@i;", "Mon, 32 Foo 99 99:99"])),
            ),
            max_size=6,
        )
    )
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    return ("From: a@example.com\n" + head + draw(_tree(3))).encode("utf-8", "surrogateescape")


_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data):
    """Any bytes give an Email or a ParseError, nothing else."""
    try:
        assert isinstance(parse_message(data), Email)
    except ParseError:
        pass


@_PROPERTY
@given(_messages())
def test_generated_mime_always_parses(data):
    """Generated MIME with odd charsets, encodings and nesting always yields an Email, reproducibly."""
    first = parse_message(data)
    assert isinstance(first, Email) and first == parse_message(data)
    assert len(first.subject.encode("utf-16-le")) // 2 <= SUBJECT_LIMIT and first.date_time.tzinfo is not None


@_PROPERTY
@given(_messages(), st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=4)), max_size=6), st.integers(0, 10_000))
def test_mutated_mime_never_crashes(data, edits, cut):
    """Generated MIME with random byte edits and truncation gives an Email or a ParseError, nothing else."""
    buffer = bytearray(data)
    for position, insert in edits:
        position %= len(buffer) + 1
        buffer[position : position + len(insert)] = insert
    try:
        assert isinstance(parse_message(bytes(buffer[: max(cut, 1)])), Email)
    except ParseError:
        pass


def _cpython_samples() -> list[Path]:
    spec = importlib.util.find_spec("test.test_email")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "data").glob("msg_*.txt"))


@pytest.mark.skipif(not _cpython_samples(), reason="CPython's test_email sample mails are not installed")
def test_cpython_sample_mails_do_not_crash():
    """Every sample mail of CPython's own email test suite gives an Email (or, header-less, a ParseError)."""
    parsed = 0
    for path in _cpython_samples():
        try:
            parsed += isinstance(parse_message(path.read_bytes()), Email)
        except ParseError as exc:
            assert str(exc) == "no headers", path.name
    assert parsed >= len(_cpython_samples()) - 2


def test_encoded_base64_sample_helper():
    """The broken-base64 sample really is broken for a strict decoder (guards the sample itself)."""
    with pytest.raises(ValueError):
        base64.b64decode(b"AAEC$$AwQFBgcI=9", validate=True)
