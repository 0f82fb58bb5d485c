"""Content fidelity: every sample mail through Dovecot and `syncd once`, what reaches the CRM compared field by
field with what Python's own email parser finds; attachment limits, long bodies, inline logos and --dry-run."""

from __future__ import annotations

import email
import html
import re
import sqlite3
from dataclasses import replace
from datetime import datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path

from syncd.associate import MAX_TOTAL_ATTACHMENTS, fit_attachments
from syncd.crm.payload import CONTENT_MAX, shorten
from syncd.email import Attachment
from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser
from tests.test_parse import MAIL, parse
from tests.test_pipeline import OWN, PNG, config_file, mail, syncd  # noqa: F401 - config_file is a fixture

SAMPLES = sorted(MAIL.glob("*.eml"))
_TAG = re.compile(r"<[^>]*>")


def addr_key(addr: str) -> str:
    """An address as a reader compares them: case-insensitive, the domain in one (Unicode) form."""
    local, _, domain = addr.rpartition("@")
    try:
        domain = domain.lower().encode("idna").decode("idna")
    except UnicodeError:
        pass
    return f"{local}@{domain}".casefold()


def visible(text: str) -> str:
    """Text as a reader sees it: tags gone, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


def readable(value: object) -> bool:
    """False where the stdlib could not decode (U+FFFD, or raw bytes kept as surrogates): nothing to compare with."""
    return not any(ch == "\ufffd" or "\udc80" <= ch <= "\udcff" for ch in str(value))


def is_address(addr: str) -> bool:
    local, at, domain = addr.rpartition("@")
    return bool(at and local and domain) and not set('<>"') & set(addr)


def stdlib(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def filtered(msg: EmailMessage) -> bool:
    """What the filter rules skip by default, read independently: bounces, auto-replies, list mail."""
    auto = str(msg.get("Auto-Submitted", "no")).strip().lower()
    return (msg.get_content_type() == "multipart/report" or auto != "no" or "List-Id" in msg
            or str(msg.get("Precedence", "")).strip().lower() in ("bulk", "list", "junk", "auto_reply"))


def mismatches(msg: EmailMessage, payload: dict, files: list) -> list[str]:
    """Every field where the CRM's copy disagrees with the stdlib's reading of the original."""
    found: list[str] = []

    def check(field: str, ours: object, theirs: object) -> None:
        if readable(theirs) and ours != theirs:
            found.append(f"{field}: CRM has {ours!r}, the original {theirs!r}")

    sender = msg["From"].addresses[0]
    check("from.email", addr_key(payload["from"]["email"]), addr_key(sender.addr_spec))
    check("from.user_name", payload["from"]["user_name"], sender.display_name or payload["from"]["email"])
    people = {addr_key(a.addr_spec) for h in ("To", "Cc", "Bcc") for a in (msg[h].addresses if msg[h] else ())
              if is_address(a.addr_spec) and readable(a.addr_spec)}
    crm_people = {addr_key(p["email"]) for key in ("to", "cc", "bcc") for p in payload.get(key, [])}
    check("to+cc+bcc", crm_people, people)
    subject = " ".join(str(msg["Subject"] or "").split()) or "(no subject)"
    crm_subject = payload["subject"]
    if crm_subject.endswith("…") and subject.startswith(crm_subject[:-1].rstrip()):
        crm_subject = subject  # cut to Zoho's 250 characters, on a character boundary
    check("subject", crm_subject, subject)
    if msg["Message-ID"]:
        check("original_message_id", payload["original_message_id"], re.sub(r"\s+", "", str(msg["Message-ID"])).strip("<>"))
    try:
        date = msg["Date"].datetime if msg["Date"] else None
    except (TypeError, ValueError, AttributeError):
        date = None
    if date is not None and date.tzinfo is not None and 1970 <= date.year:
        check("date_time", datetime.fromisoformat(payload["date_time"]), date.replace(microsecond=0))
    body = msg.get_body(preferencelist=("html", "plain"))
    if body is not None:
        text = visible(body.get_content())
        if readable(text) and text not in visible(payload["content"]):
            found.append(f"content: the original's text {text[:80]!r}… is not in the CRM's {payload['content'][:80]!r}…")
        check("mail_format", payload.get("mail_format", "text"), "html" if body.get_content_type() == "text/html" else "text")
    named = [(p.get_filename(), len(p.get_payload(decode=True) or b""), p) for p in msg.walk()
             if not p.is_multipart() and p.get_filename() and p.get_content_maintype() != "message"]
    attached = {(f.name, f.size) for f in files if not f.inline}
    inline = {(f.name, f.size) for f in files if f.inline}
    for name, size, part in named:
        size = size if not part.defects else next((f.size for f in files if f.name == name), size)  # broken encoding
        shown_inline = payload.get("mail_format") == "html" and part["Content-ID"] and part.get_content_maintype() == "image" \
            and part.get_content_disposition() != "attachment"
        if (name, size) not in (inline if shown_inline else attached):
            found.append(f"attachment {name!r} ({size} bytes) not {'inline' if shown_inline else 'attached'}")
    names = [a["name"] for a in payload.get("attachments", [])]
    check("attachment names are unique per part", len(names), len(attached) if len(set(names)) == len(names) else -1)
    return found


def test_every_sample_reaches_the_crm_as_the_stdlib_reads_it(config_file: Path, imap_user: ImapUser,
                                                             crm_server: SandboxServer):
    """Each sample mail (charsets, MIME shapes) arrives with sender, recipients, subject, id, date, text and files intact."""
    originals = {path.name: path.read_bytes() for path in SAMPLES}
    readings = {name: stdlib(raw) for name, raw in originals.items()}
    senders = {addr_key(m["From"].addresses[0].addr_spec) for m in readings.values() if m["From"]}
    crm_server.seed("Contacts", [{"Last_Name": s, "Email": s} for s in sorted(senders)])
    imap_user.append_many("INBOX", list(originals.values()))
    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert crm_server.violations == []
    by_id = {(e.original_message_id, e.record_id): e for e in crm_server.received()}
    problems = []
    for name, msg in readings.items():
        ours = parse(name)
        copies = [e for (mid, _), e in by_id.items() if mid == ours.message_id]
        if filtered(msg):
            if copies:
                problems.append(f"{name}: a bounce, auto-reply or list mail reached the CRM")
            continue
        if not copies:
            problems.append(f"{name}: never reached the CRM")
            continue
        problems += [f"{name}: {p}" for p in mismatches(msg, copies[0].payload, copies[0].files)]
    assert problems == [], "\n".join(problems)


def test_files_over_ten_megabytes_are_listed_not_attached(config_file: Path, imap_user: ImapUser,
                                                          crm_server: SandboxServer):
    """6 + 6 + 1 MB: the first and the last are attached, the second is named in a note; the email is not refused."""
    big = mail("bob@example.com", OWN, "Big files", "See the files.", message_id="<big@x>")
    for name, size in (("a.bin", 6), ("b.bin", 6), ("c.bin", 1)):
        big.add_attachment(b"x" * size * 1024 * 1024, maintype="application", subtype="octet-stream", filename=name)
    imap_user.append("INBOX", bytes(big))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (sent,) = crm_server.received()
    assert [a["name"] for a in sent.payload["attachments"]] == ["a.bin", "c.bin"]
    assert sum(f.size for f in sent.files) <= MAX_TOTAL_ATTACHMENTS
    assert "See the files." in sent.payload["content"]
    assert "Not attached here, over Zoho's 10 MB limit" in sent.payload["content"]
    assert f"b.bin ({6 * 1024 * 1024:,} bytes)" in sent.payload["content"]


def test_long_body_is_shortened_with_a_note_and_keeps_the_attachment_note(config_file: Path, imap_user: ImapUser,
                                                                          crm_server: SandboxServer):
    """An html body over CONTENT_MAX arrives cut (on a tag boundary) to the limit, with both notes visible."""
    long = mail("bob@example.com", OWN, "Long", message_id="<long@x>")
    long.set_content("<!-- " + "x" * 1000 + " -->" + "<p>Paragraph &amp; more</p>" * 4000, subtype="html")
    long.add_attachment(b"y" * 11 * 1024 * 1024, maintype="application", subtype="pdf", filename="huge.pdf")
    imap_user.append("INBOX", bytes(long))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (sent,) = crm_server.received()
    content = sent.payload["content"]
    assert len(content.encode("utf-16-le")) // 2 <= CONTENT_MAX
    assert content.startswith("<p>Paragraph &amp; more</p>")
    assert "its end is cut off here" in content and "huge.pdf" in content
    assert re.search(r"</p>(<p>Paragraph &amp; more</p>)*(<p>Paragraph &amp; more)?<hr>", content)


def test_shorten_never_cuts_inside_a_tag_or_entity():
    """Cut points fall before an unfinished tag or entity; text mail gets a plain-text note; short text is untouched."""
    assert shorten("short", html_mail=False, limit=10) == "short"
    for cut in range(150, 200):
        out = shorten("<p>" + "ab &amp; <b class='x'>cd</b> " * 40 + "</p>", html_mail=True, limit=cut + 200)
        head = out[: out.index("<hr><p>[syncd]")]
        assert not re.search(r"<[^>]*$", head) and not re.search(r"&[a-z]*$", head)
    text = shorten("word " * 100, html_mail=False, limit=300)
    assert len(text) <= 300 and text.endswith("The whole message is still in the mailbox.") and "\n-- \n" in text


def test_fit_attachments_keeps_order_and_reports_the_rest():
    """Files are kept in order while they fit in 10 MB; later small files still fit after a big one is left out."""
    mb = 1024 * 1024
    files = tuple(Attachment(n, "application/octet-stream", b"z" * s * mb) for n, s in (("a", 4), ("b", 7), ("c", 5), ("d", 21)))
    fitted, left = fit_attachments(replace(parse("plain.eml"), attachments=files))
    assert [a.filename for a in fitted.attachments] == ["a", "c"] and [a.filename for a in left] == ["b", "d"]


def test_unreferenced_logo_is_uploaded_inline_and_shown(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """A signature logo the html never references is uploaded type=inline, shown at the end, not listed as attachment."""
    msg = mail("bob@example.com", OWN, "Signature", message_id="<sig@x>")
    msg.set_content("<p>Regards, Bob</p>", subtype="html")
    msg.add_related(PNG, maintype="image", subtype="png", cid="<logo@bob>", filename="logo.png", disposition="inline")
    imap_user.append("INBOX", bytes(msg))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (sent,) = crm_server.received()
    assert "attachments" not in sent.payload
    assert [(f.name, f.inline) for f in sent.files] == [("logo.png", True)]
    assert re.search(r'<img class="ZCrmImage" src="crm/img_id:\w+">', sent.payload["content"])


def test_dry_run_prints_what_it_would_send_and_writes_nothing(config_file: Path, imap_user: ImapUser,
                                                              crm_server: SandboxServer):
    """`once --dry-run` names the record, deal and payload per message; no upload, no association, no ledger change."""
    (deal,) = crm_server.seed("Deals", [{"Deal_Name": "Renewal", "Stage": "Qualification",
                                         "Modified_Time": "2024-01-01T00:00:00Z", "Contact_Name": {"id": crm_server.contact_ids[0]}}])
    first = mail("bob@example.com", OWN, "Already synced", message_id="<old@x>")
    imap_user.append("INBOX", bytes(first))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    ledger = config_file.parent / "ledger.sqlite3"
    before = ledger.read_bytes(), len(crm_server.received())
    new = mail("bob@example.com", OWN, "Quote please", "Three units.", message_id="<dry@x>")
    new.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="rfq.pdf")
    imap_user.append("INBOX", bytes(new))
    imap_user.append("INBOX", bytes(mail("stranger@nowhere.example", OWN, "Who", message_id="<who@x>")))
    requests = len(crm_server.requests)

    dry = syncd("once", "--dry-run", "-c", str(config_file))
    assert dry.returncode == 0, dry.stderr
    bob = crm_server.contact_ids[0]
    assert f"would associate dry@x with Contacts/{bob} (Bob Buyer), deal {deal} (Renewal):" in dry.stdout
    assert '"subject": "Quote please"' in dry.stdout and '"attachments": ["rfq.pdf (8 bytes)"]' in dry.stdout
    assert '"Three units.' in dry.stdout
    assert "old@x" not in dry.stdout.split("would associate", 1)[-1]
    assert re.search(r"unmatched\s+Who", dry.stdout)
    writes = [p for m, p in crm_server.requests[requests:] if m == "POST" and ("/files" in p or "associate" in p)]
    assert writes == [] and len(crm_server.received()) == before[1]
    assert ledger.read_bytes() == before[0]
    assert sqlite3.connect(ledger).execute("SELECT count(*) FROM messages WHERE message_id='dry@x'").fetchone() == (0,)


def test_dry_run_on_an_unreadable_ledger_says_so_and_changes_nothing(config_file: Path, imap_user: ImapUser,
                                                                     crm_server: SandboxServer):
    """A corrupt ledger makes --dry-run exit 1 naming the file, with the file and the CRM untouched."""
    ledger = config_file.parent / "ledger.sqlite3"
    ledger.write_bytes(b"not a database" * 100)
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hi", message_id="<c@x>")))
    done = syncd("once", "--dry-run", "-c", str(config_file))
    assert done.returncode == 1 and f"cannot read the ledger {ledger}" in done.stderr
    assert ledger.read_bytes() == b"not a database" * 100 and crm_server.received() == []
