"""End to end: messages APPENDed to a real Dovecot, `syncd once` run, what the sandbox CRM received checked."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from syncd.sandbox import SandboxServer
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.wait import wait_until

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
OWN = "me@ourco.example"


def mail(frm: str, to: str, subject: str, body: str = "Hello.", *, cc: str = "", bcc: str = "",
         message_id: str | None = "auto", date: str = "Tue, 03 Nov 2026 10:15:00 +0100") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Date"] = frm, to, subject, date
    if cc:
        m["Cc"] = cc
    if bcc:
        m["Bcc"] = bcc
    if message_id:
        m["Message-ID"] = f"<{abs(hash((frm, subject)))}@test.example>" if message_id == "auto" else message_id
    m.set_content(body)
    return m


@pytest.fixture
def config_file(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer) -> Path:
    client_id, client_secret, refresh_token = crm_server.credentials()
    (tmp_path / "secret").write_text(client_secret)
    path = tmp_path / "syncd.toml"
    path.write_text(f"""
[crm]
client_id = "{client_id}"
client_secret_file = "secret"
refresh_token = "{refresh_token}"
api_domain = "{crm_server.url}"
accounts_url = "{crm_server.url}"
timeout = 5

[ledger]
path = "ledger.sqlite3"

[[mailbox]]
name = "sales"
host = "{imap_user.host}"
port = {imap_user.port}
security = "none"
username = "{imap_user.username}"
password = "{imap_user.password}"
addresses = ["{OWN}"]
poll_interval = 1
""")
    return path


def syncd(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "syncd", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def test_received_and_sent_mail_arrive_field_by_field(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """A received HTML mail with an inline image and an attachment, and a sent mail, reach the right records intact."""
    received = mail('"Bob Buyer" <bob@example.com>', f"Me <{OWN}>", "=?utf-8?q?Pr=C3=A9sentation?= and quote",
                    "Plain part", cc='"Carl" <carl@elsewhere.example>', message_id="<  Quote-1@Example.COM >")
    received.add_alternative('<p>See <b>this</b>: <img src="cid:logo@x"></p>', subtype="html")
    received.get_payload()[1].add_related(PNG, maintype="image", subtype="png", cid="<logo@x>", filename="logo.png")
    received.add_attachment(b"%PDF-1.4 quote", maintype="application", subtype="pdf", filename="quote.pdf")
    imap_user.append("INBOX", bytes(received))
    sent = mail(f"Me <{OWN}>", '"Lena" <LENA@prospect.example>', "Your trial", "Welcome aboard.",
                cc="bob@example.com", bcc="audit@ourco.example", message_id="<sent-1@ourco.example>",
                date="Wed, 04 Nov 2026 08:00:00 -0500")
    imap_user.append("Sent", bytes(sent))

    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 0, done.stderr
    assert crm_server.violations == []
    got = {(e.module, e.record_id, e.original_message_id): e.payload for e in crm_server.received()}
    bob, lena = crm_server.contact_ids[0], crm_server.lead_ids[0]
    assert set(got) == {("Contacts", bob, "Quote-1@Example.COM"), ("Leads", lena, "sent-1@ourco.example"),
                        ("Contacts", bob, "sent-1@ourco.example")}

    r = got[("Contacts", bob, "Quote-1@Example.COM")]
    assert r["from"] == {"user_name": "Bob Buyer", "email": "bob@example.com"}
    assert r["to"] == [{"user_name": "Me", "email": OWN}]
    assert r["cc"] == [{"user_name": "Carl", "email": "carl@elsewhere.example"}]
    assert "bcc" not in r
    assert r["subject"] == "Présentation and quote"
    assert r["mail_format"] == "html" and r["sent"] is False
    assert r["date_time"] == "2026-11-03T10:15:00+01:00"
    (img_id,) = re.findall(r'src="crm/img_id:(\w+)"', r["content"])
    assert [a["name"] for a in r["attachments"]] == ["quote.pdf"]
    assert img_id not in {a["id"] for a in r["attachments"]}

    s = got[("Leads", lena, "sent-1@ourco.example")]
    assert s["sent"] is True and s["from"]["email"] == OWN
    assert s["to"] == [{"user_name": "Lena", "email": "LENA@prospect.example"}]
    assert [c["email"] for c in s["cc"]] == ["bob@example.com"]
    assert s["bcc"][0]["email"] == "audit@ourco.example"
    assert "Welcome aboard." in s["content"] and s.get("mail_format") != "html"
    assert s["date_time"] == "2026-11-04T08:00:00-05:00"
    assert_no_secrets(done.stderr + done.stdout, imap_user.password, *crm_server.credentials()[1:])


def test_second_run_sends_nothing(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """Running once again over the same folder makes no CRM write: the ledger remembers every delivery."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hi")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    writes = [r for r in crm_server.requests if r[0] == "POST" and "token" not in r[1]]
    again = syncd("once", "-c", str(config_file))
    assert again.returncode == 0 and "nothing new" in again.stdout
    assert [r for r in crm_server.requests if r[0] == "POST" and "token" not in r[1]] == writes
    assert len(crm_server.received()) == 1


def test_unknown_sender_is_unmatched_without_a_write(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """Mail from an address no record has is recorded as unmatched, and nothing is written to the CRM."""
    imap_user.append("INBOX", bytes(mail("stranger@nowhere.example", OWN, "Who am I", message_id="<u1@x>")))
    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 0
    assert crm_server.received() == []
    assert not any("/files" in p or "associate" in p for _, p in crm_server.requests)
    shown = syncd("ledger", "show", "u1@x", "-c", str(config_file))
    assert "unmatched" in shown.stdout and "stranger@nowhere.example" in shown.stdout


def test_bad_messages_are_quarantined_and_the_folder_goes_on(config_file: Path, imap_user: ImapUser,
                                                           crm_server: SandboxServer):
    """An unparseable message and one the CRM refuses are quarantined with reasons; later messages still arrive."""
    imap_user.append("INBOX", b"\x00\x01\x02 not a mail at all")
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Refused", message_id="<refused@x>")))
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Fine", message_id="<fine@x>")))
    crm_server.inject(r"associate_email", status=400,
                      body={"Emails": [{"code": "INVALID_DATA", "details": {}, "message": "provided file id is improper",
                                        "status": "error"}]})
    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 0, done.stderr
    assert [e.original_message_id for e in crm_server.received()] == ["fine@x"]
    listed = syncd("ledger", "list", "--state", "quarantined", "-c", str(config_file)).stdout
    assert "INVALID_DATA" in listed and "cannot parse" in listed

    assert syncd("ledger", "retry", "refused@x", "-c", str(config_file)).returncode == 0
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert sorted(e.original_message_id for e in crm_server.received()) == ["fine@x", "refused@x"]


def test_crm_outage_leaves_messages_for_retry_then_delivers_once(config_file: Path, imap_user: ImapUser,
                                                                 crm_server: SandboxServer):
    """With the CRM answering 503, `once` exits non-zero and keeps the messages; once it recovers they go through once."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "During outage", message_id="<o1@x>")))
    crm_server.inject(r"associate_email", status=503)
    down = syncd("once", "-c", str(config_file))
    assert down.returncode == 1 and crm_server.received() == []
    assert "retry" in syncd("ledger", "show", "o1@x", "-c", str(config_file)).stdout
    assert syncd("ledger", "retry", "-c", str(config_file)).returncode == 0  # due now rather than after the backoff
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert [e.original_message_id for e in crm_server.received()] == ["o1@x"]


def test_once_stays_incomplete_while_a_message_waits_for_its_retry_time(config_file: Path, imap_user: ImapUser,
                                                                        crm_server: SandboxServer):
    """A message left in retry is not final: a pass before its retry time exits 1 and says so, sending nothing."""
    config_file.write_text(config_file.read_text().replace("poll_interval = 1", "poll_interval = 600"))
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Later", message_id="<w1@x>")))
    crm_server.inject(r"associate_email", status=503)
    assert syncd("once", "-c", str(config_file)).returncode == 1
    waiting = syncd("once", "-c", str(config_file))
    assert waiting.returncode == 1 and "1 waiting to be retried" in waiting.stdout, waiting.stdout
    assert crm_server.received() == []
    assert syncd("ledger", "retry", "-c", str(config_file)).returncode == 0
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert [e.original_message_id for e in crm_server.received()] == ["w1@x"]


def test_lost_answer_is_resent_and_recognised_as_duplicate(config_file: Path, imap_user: ImapUser,
                                                           crm_server: SandboxServer):
    """When the connection drops after Zoho stored the email, the resend gets DUPLICATE_DATA: one copy in the CRM."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Lost answer", message_id="<lost@x>")))
    crm_server.inject(r"associate_email", reset_after=True)
    assert syncd("once", "-c", str(config_file)).returncode == 1
    assert syncd("ledger", "retry", "lost@x", "-c", str(config_file)).returncode == 0
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert [e.original_message_id for e in crm_server.received()] == ["lost@x"]
    assert "duplicate" in syncd("ledger", "show", "lost@x", "-c", str(config_file)).stdout


def test_token_expiry_mid_run_refreshes_once(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer,
                                             crm_settings):
    """A token that expires while the daemon runs is refreshed once and the call repeated."""
    from syncd.app import App
    from syncd.settings import LedgerSettings, Settings

    settings = Settings(crm=crm_settings, ledger=LedgerSettings(tmp_path / "l.sqlite3"),
                        mailboxes=(imap_user.settings(addresses=(OWN,)),))
    app = App(settings)
    try:
        imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "First", message_id="<t1@x>")))
        assert app.once()[0].complete
        crm_server.expire_tokens()
        imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Second", message_id="<t2@x>")))
        assert app.once()[0].complete
        assert app.crm.calls["token"] == 2
    finally:
        app.close()
    assert [e.original_message_id for e in crm_server.received()] == ["t1@x", "t2@x"]


def test_check_reports_each_connection(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """`syncd check` says ok for the mailbox folders and the CRM, and FAIL with the reason for a wrong password."""
    ok = syncd("check", "-c", str(config_file))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"ok\s+mailbox sales: INBOX \(received", ok.stdout)
    assert re.search(r"ok\s+mailbox sales: Sent \(sent", ok.stdout)
    assert re.search(r"ok\s+crm: ", ok.stdout)
    config_file.write_text(config_file.read_text().replace(imap_user.password, "wrong-password"))
    bad = syncd("check", "-c", str(config_file))
    assert bad.returncode == 1 and re.search(r"FAIL\s+mailbox sales", bad.stdout)
    assert "wrong-password" not in bad.stdout + bad.stderr


def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path):
    """A broken config file exits 2 with every problem listed with its key."""
    path = tmp_path / "bad.toml"
    path.write_text('[crm]\ndata_center = "mars"\n[[mailbox]]\nname = "x"\nmaildir = "m"\ncolour = 1\n')
    done = syncd("once", "-c", str(path))
    assert done.returncode == 2
    assert f"{path}: crm.data_center" in done.stderr and f"{path}: mailbox[0].colour" in done.stderr


def test_demo_runs_without_any_configuration(tmp_path: Path):
    """With no config anywhere, `syncd once` syncs the sample mailbox into the sandbox and summarises it."""
    if Path("/etc/syncd/syncd.toml").exists():
        pytest.skip("this machine has a real /etc/syncd/syncd.toml")
    env = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"), "SYNCD_CONFIG": ""}
    first = syncd("once", env=env)
    assert first.returncode == 0, first.stderr
    assert "built-in demo" in first.stderr
    assert re.search(r"mailbox demo: 5 done, 2 skipped, 1 unmatched", first.stdout)
    second = syncd("once", env=env)
    assert second.returncode == 0 and "mailbox demo: nothing new" in second.stdout


def test_run_stops_cleanly_on_sigterm(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """`syncd run` syncs new mail while running and exits 0 soon after SIGTERM."""
    # The signal lands once the pass has ended, and no other starts: a pass inside an IMAP call at the signal
    # is left to the exit and may still log after "stopped" (stops mid-pass: tests/faults/test_shutdown.py).
    config_file.write_text(config_file.read_text().replace("poll_interval = 1\n", "poll_interval = 3600\n"))
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "While running", message_id="<run@x>")))
    log = config_file.parent / "run.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "syncd", "--log-format", "json", "run", "-c", str(config_file)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(crm_server.received, "the message to be associated", proc=proc)
        assert [e.original_message_id for e in crm_server.received()] == ["run@x"]
        wait_until(lambda: '"pass_done"' in log.read_text(), "the pass to end", proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [json.loads(line)["event"] for line in log.read_text().splitlines() if line.startswith("{")]
    assert "stopping" in events and events[-1] == "stopped"


def test_once_beside_a_running_daemon_leaves_its_mailbox_alone(config_file: Path, imap_user: ImapUser,
                                                               crm_server: SandboxServer):
    """`syncd once` while `syncd run` is mid-pass on the same mailbox and ledger sends nothing, names the daemon's
    pid and exits 1; once the daemon is gone (even SIGKILLed), `once` delivers the message exactly once."""
    config_file.write_text(config_file.read_text().replace("timeout = 5", "timeout = 120"))
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Busy", message_id="<busy@x>")))
    crm_server.inject(r"associate_email", status=503, delay=600)  # the daemon's send hangs: it stays mid-pass
    lock = config_file.parent / "ledger.sqlite3-sales.lock"
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "run", "-c", str(config_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: lock.exists() and f"pid {proc.pid}:" in lock.read_text(), "the daemon to take the mailbox",
                   proc=proc)
        busy = syncd("once", "-c", str(config_file))
        assert busy.returncode == 1, busy.stdout + busy.stderr
        assert f"pid {proc.pid}: syncd run" in busy.stdout and "mailbox sales: not synced" in busy.stdout
        assert crm_server.received() == []
    finally:
        proc.kill()
        proc.wait()
    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [e.original_message_id for e in crm_server.received()] == ["busy@x"]


def test_daemon_waits_out_a_mailbox_held_by_another_process(config_file: Path, imap_user: ImapUser,
                                                            crm_server: SandboxServer, lock_holder, tmp_path: Path):
    """`syncd run` finding its mailbox held elsewhere logs mailbox_busy, keeps polling, and delivers once it is free."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Held", message_id="<held@x>")))
    holder = lock_holder(config_file.parent / "ledger.sqlite3", "sales")
    log = tmp_path / "run.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "syncd", "--log-format", "json", "run", "-c", str(config_file)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: '"mailbox_busy"' in log.read_text(), "mailbox_busy to be logged", proc=proc)
        assert crm_server.received() == []
        holder.stdin.close()
        wait_until(crm_server.received, "the delivery after the release", proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [e.original_message_id for e in crm_server.received()] == ["held@x"]
