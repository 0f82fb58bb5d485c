"""A seeded corpus of mixed messages: received and sent, text and HTML, attachments, inline images,
auto-replies, list mail, unknown senders, missing Message-IDs, other charsets."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime

OWN = "sales@acme.example"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def correspondents(n: int) -> list[tuple[str, str]]:
    return [(f"Person {i}", f"person{i}@customer{i % 17}.example") for i in range(n)]


def message(rng: random.Random, i: int, people: list[tuple[str, str]]) -> bytes:
    name, addr = rng.choice(people)
    kind = rng.random()
    m = EmailMessage()
    sent = kind < 0.25
    m["From"] = f"Sales <{OWN}>" if sent else f'"{name}" <{addr}>'
    m["To"] = f'"{name}" <{addr}>' if sent else OWN
    if rng.random() < 0.2:
        other = rng.choice(people)
        m["Cc"] = f'"{other[0]}" <{other[1]}>'
    if rng.random() < 0.05 and not sent:
        m.replace_header("From", f"stranger{i}@nowhere.example")
    subject = rng.choice(["Quote", "Re: Order", "Réunion", "Invoice", "Follow-up", "見積もり"])
    m["Subject"] = f"{subject} #{i}"
    when = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=rng.choice([-5, 0, 1, 9])))) + timedelta(minutes=37 * i)
    m["Date"] = format_datetime(when)
    if rng.random() > 0.03:
        m["Message-ID"] = f"<bench-{i}-{rng.getrandbits(32):08x}@mail.example>"
    if rng.random() < 0.04:
        m["Auto-Submitted"] = "auto-replied"
    if rng.random() < 0.04:
        m["List-Id"] = "<news.vendor.example>"
    body = f"Hello,\n\nmessage {i} about {subject}.\n\n" + "Lorem ipsum dolor sit amet. " * rng.randint(2, 60)
    m.set_content(body, charset=rng.choice(["utf-8", "utf-8", "iso-8859-1"]) if subject.isascii() else "utf-8")
    if rng.random() < 0.4:
        m.add_alternative(f"<p>{body}</p><p><img src=\"cid:logo{i}@acme\"></p>", subtype="html")
        m.get_payload()[1].add_related(PNG, maintype="image", subtype="png", cid=f"<logo{i}@acme>")
    if rng.random() < 0.2:
        m.add_attachment(rng.randbytes(rng.randint(1_000, 200_000)), maintype="application", subtype="pdf",
                         filename=f"doc-{i}.pdf")
    return bytes(m)


def corpus(count: int, *, people: int = 50, seed: int = 1) -> tuple[list[bytes], list[tuple[str, str]]]:
    rng = random.Random(seed)
    who = correspondents(people)
    return [message(rng, i, who) for i in range(count)], who
