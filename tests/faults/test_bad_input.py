"""Bad mail through the whole pipeline (Dovecot → parse → filter → match → the CRM's spec check): real-world
bounces and seeded mutations of MIME. Never a crash: each message is associated, or recorded final with a
reason, and a quarantined one can be replayed with `syncd ledger retry`.

`SYNCD_SOAK=N` multiplies the number of fuzzed messages by N.
"""

from __future__ import annotations

import base64
import email
import email.utils
import random
import sqlite3
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest
from imapclient.exceptions import IMAPClientError

from syncd.ledger import FINAL
from syncd.sandbox import SandboxServer
from tests.faults.conftest import SOAK
from tests.faults.daemon import copies, write_config
from tests.fixtures.dovecot import ImapUser
from tests.test_pipeline import OWN, PNG, syncd

BOUNCES = Path("/usr/lib/python3/dist-packages/flufl/bounce/tests/data")
"""Debian's python3-flufl.bounce: real bounce messages from many MTAs (tests/run installs it)."""


def _rows(config: Path) -> list[tuple[str, str, str]]:
    """(message_id, state, reason) of every message row in the ledger."""
    db = sqlite3.connect(f"file:{config.parent / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT message_id, state, reason FROM messages").fetchall()
    finally:
        db.close()


def _append_all(user: ImapUser, messages: list[bytes]) -> int:
    """APPEND each message on its own; returns how many Dovecot refused (a zero-byte message, say)."""
    refused = 0
    with user.client() as c:
        for m in messages:
            try:
                c.append("INBOX", m)
            except IMAPClientError:
                refused += 1
    return refused


def _assert_no_crash(config: Path, crm: SandboxServer, expected: int) -> Counter:
    """One pass: exit 0, every message final with a reason where it was not delivered, no internal error, no spec violation."""
    done = syncd("once", "-c", str(config), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = _rows(config)
    assert len(rows) == expected
    assert all(state in FINAL for _, state, _ in rows)
    assert not [r for r in rows if "internal error" in r[2]], "a message hit an unforeseen error"
    assert all(reason for _, state, reason in rows if state != "done")
    assert crm.violations == [] and max(copies(crm).values(), default=1) == 1
    return Counter(state for _, state, _ in rows)


@pytest.mark.skipif(not BOUNCES.is_dir(), reason="needs Debian's python3-flufl.bounce (tests/run installs it)")
def test_flufl_bounce_samples_pass_through_the_pipeline(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """Every bounce sample of python3-flufl.bounce, from a sender that is a Contact, ends final with a reason; none crashes."""
    samples = sorted(p.read_bytes() for p in BOUNCES.iterdir() if p.suffix in (".txt", ".eml"))
    senders = {email.utils.parseaddr(str(email.message_from_bytes(s).get("From", "")))[1] for s in samples}
    crm_server.seed("Contacts", [{"Last_Name": f"Sender {i}", "Email": a} for i, a in enumerate(sorted(senders)) if "@" in a])
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    refused = _append_all(imap_user, samples)
    states = _assert_no_crash(config, crm_server, len(samples) - refused)
    print(f"\nflufl.bounce samples: {len(samples)} ({refused} refused by Dovecot), outcome {dict(states)}, crashes 0")


# -- seeded MIME mutations -----------------------------------------------------------------------------


def _base(rng: random.Random, i: int) -> bytes:
    """A well-formed mail from a Contact: text, HTML with an inline image, attachments, a forwarded mail."""
    m = EmailMessage()
    m["From"] = rng.choice(['"Bob Buyer" <bob@example.com>', "lena@prospect.example", "=?utf-8?b?SsOkY29i?= <jacob@example.com>"])
    m["To"], m["Subject"], m["Date"] = OWN, f"Fuzz {i} =?iso-8859-1?q?caf=E9?=", "Tue, 03 Nov 2026 10:15:00 +0100"
    m["Message-ID"] = f"<fuzz{i}@bad.example>"
    m.set_content(f"Hello {i}\n" * rng.randint(1, 5))
    if rng.random() < 0.6:
        m.add_alternative(f'<p>Hi <b>{i}</b> <img src="cid:img{i}@x"></p>', subtype="html")
        m.get_payload()[1].add_related(PNG, maintype="image", subtype="png", cid=f"<img{i}@x>", filename="i.png")
    if rng.random() < 0.5:
        m.add_attachment(rng.randbytes(rng.randint(0, 3000)), maintype="application", subtype="octet-stream",
                         filename=rng.choice(["a.bin", "=?utf-8?q?r=C3=A9sum=C3=A9?=.pdf", "../../etc/x", ""]))
    if rng.random() < 0.2:
        inner = EmailMessage()
        inner["Subject"] = "inner"
        inner.set_content("forwarded")
        m.add_attachment(inner)
    return bytes(m)


def _nest(data: bytes, depth: int) -> bytes:
    """Wrap a message's body in ``depth`` multipart/mixed layers (deep nesting)."""
    head, _, body = data.partition(b"\n\n")
    for d in range(depth):
        body = (f"--b{d}\nContent-Type: multipart/mixed; boundary=b{d + 1}\n\n".encode() + body + f"\n--b{d}--\n".encode())
    return b"From: bob@example.com\nMessage-ID: <nest@bad.example>\nContent-Type: multipart/mixed; boundary=b0\n\n" + body


MUTATIONS = {
    "flip bytes": lambda rng, d: bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.01 else b for b in d),
    "truncate": lambda rng, d: d[: rng.randrange(len(d) + 1)],
    "zero bytes": lambda rng, d: b"",
    "nul and controls": lambda rng, d: d.replace(b"\n", b"\x00\r\x0b\n", rng.randint(1, 20)),
    "8-bit headers": lambda rng, d: d.replace(b"Subject: ", "Subject: Größe \xff ".encode("latin-1"), 1),
    "bad charset": lambda rng, d: d.replace(b"charset=\"utf-8\"", b"charset=\"x-no-such-charset\"").replace(
        b"charset=utf-8", b"charset=unicode-1-1-utf-7"),
    "broken base64": lambda rng, d: d.replace(b"Content-Transfer-Encoding: base64\n\n",
                                              b"Content-Transfer-Encoding: base64\n\n!!*@#$%^&", 3),
    "huge header": lambda rng, d: b"X-Huge: " + b"a" * rng.randint(10_000, 200_000) + b"\n" + d,
    "many headers": lambda rng, d: b"".join(b"Received: from x%d\n" % k for k in range(rng.randint(100, 3000))) + d,
    "no boundary end": lambda rng, d: d.replace(b"--\n", b"\n"),
    "bad encoded words": lambda rng, d: d.replace(b"Subject: ", b"Subject: =?utf-8?b?####?= =?bogus?q?x?= ", 1),
    "deep nesting": lambda rng, d: _nest(d, rng.randint(50, 400)),
    "bare CR line ends": lambda rng, d: d.replace(b"\n", b"\r"),
    "address garbage": lambda rng, d: d.replace(b"From: ", b"From: <<@>>,,\"unterminated <", 1),
    "random base64 bodies": lambda rng, d: d + b"\n" + base64.b64encode(rng.randbytes(500))[: rng.randrange(600)],
}


def _fuzzed(rng: random.Random, n: int) -> tuple[list[bytes], Counter]:
    out, used = [], Counter()
    for i in range(n):
        data = _base(rng, i)
        for name in rng.sample(sorted(MUTATIONS), rng.randint(1, 3)):
            data = MUTATIONS[name](rng, data)
            used[name] += 1
        out.append(data)
    return out, used


@pytest.mark.timeout(120 * SOAK)
def test_mutated_mime_never_crashes_and_a_quarantined_one_replays(tmp_path: Path, imap_user: ImapUser,
                                                                  crm_server: SandboxServer):
    """Seeded mutations of MIME (bit flips, truncation, zero bytes, NULs, bad charsets and base64, huge headers, deep nesting) through `once`: no crash; a CRM-refused one replays after `ledger retry`."""
    rng = random.Random(20261123)
    n = 120 * SOAK
    messages, used = _fuzzed(rng, n)
    messages.append(_base(random.Random(0), 10_000))  # clean: refused by the CRM below, then replayed
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    refused = _append_all(imap_user, messages)
    crm_server.inject(r"/actions/associate_email", status=400, times=1, body={"Emails": [
        {"code": "INVALID_DATA", "details": {}, "message": "fix me", "status": "error"}]})
    states = _assert_no_crash(config, crm_server, len(messages) - refused)

    (victim,) = [mid for mid, state, reason in _rows(config) if "INVALID_DATA" in reason]
    assert syncd("ledger", "retry", victim, "-c", str(config)).returncode == 0
    assert syncd("once", "-c", str(config)).returncode == 0
    assert victim in {e.original_message_id for e in crm_server.received()}
    print(f"\nfuzzed inputs {n} ({refused} refused by Dovecot; mutations {dict(used)}), outcome {dict(states)}, "
          "crashes 0, quarantined one replayed")
