"""No password, token or client secret in anything syncd prints, writes to its ledger or serves as metrics.

A representative run of every command (at debug level, JSON and console logs, with
failures on purpose) is scanned here; every other test's captured output is scanned by
the ``tests.fixtures.secret_scan`` plugin.
"""

from __future__ import annotations

import io
import logging
import signal
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from syncd import log
from syncd.crm.zoho import ZohoCrm
from syncd.sandbox import SandboxServer
from syncd.settings import CrmSettings
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.secret_scan import leaks, secrets_of
from tests.fixtures.wait import wait_until
from tests.test_pipeline import OWN, config_file, mail, syncd  # noqa: F401 - config_file is a fixture

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_command_keeps_secrets_out_of_output_ledger_and_metrics(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                                                     crm_server: SandboxServer):
    """once, run (with metrics), check, status, ledger list/show, with failures on purpose: no secret anywhere."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Secret scan", message_id="<scan1@x>")))
    imap_user.append("INBOX", bytes(mail("stranger@nowhere.example", OWN, "Unknown", message_id="<scan2@x>")))
    crm_server.inject(r"associate_email", status=503)  # a retry, with the CRM's error text in the ledger
    runs = [("json", "once"), ("console", "check"), ("console", "status"), ("json", "status", "--json"),
            ("json", "ledger", "list"), ("json", "ledger", "show", "scan1@x"),
            ("json", "ledger", "retry")]  # due now, not after the 503's backoff: the daemon below delivers it
    outputs = []
    for fmt, *args in runs:
        done = syncd("--log-level", "debug", "--log-format", fmt, *args, "-c", str(config_file))
        outputs.append(done.stdout + done.stderr)
    crm_server.expire_tokens()  # the next CRM call refreshes mid-run
    port = _free_port()
    config_file.write_text(config_file.read_text() + f'\n[metrics]\nlisten = "{port}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "--log-level", "debug", "run", "-c", str(config_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = ""

    def scraped() -> bool:
        nonlocal metrics
        try:
            metrics = "".join(urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=30).read().decode()
                              for path in ("metrics", "readyz"))
        except OSError:  # not listening yet
            return False
        return True

    try:
        wait_until(lambda: "scan1@x" in {e.original_message_id for e in crm_server.received()},
                   "the daemon to deliver scan1@x", proc=proc)
        wait_until(scraped, "/metrics and /readyz to answer", proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    outputs += [out + err, metrics]
    config_file.write_text(config_file.read_text().replace(imap_user.password, "wrong-but-secret-pw"))
    for args in (["once"], ["check"], ["status"]):
        done = syncd("--log-level", "debug", *args, "-c", str(config_file))
        outputs.append(done.stdout + done.stderr)
    ledger = (config_file.parent / "ledger.sqlite3").read_bytes().decode("latin-1")

    assert [e.original_message_id for e in crm_server.received()] == ["scan1@x"]  # the run did real work
    found = [*secrets_of(imap_user), *secrets_of(crm_server), ("IMAP password", "wrong-but-secret-pw")]
    assert len([k for k, _ in found if k == "CRM access token"]) >= 2
    for text in [*outputs, ledger]:
        assert leaks(text, found) == []


def test_library_logging_at_debug_never_shows_a_token(crm_settings: CrmSettings, crm_server: SandboxServer):
    """At debug level httpx/httpcore stay quiet; and a library line that did print a token shows *** instead."""
    stream = io.StringIO()
    log.configure(stream=stream, level=logging.DEBUG, json=True)
    try:
        with ZohoCrm(crm_settings) as crm:
            crm.check()
        token = next(iter(crm_server.org._tokens))  # noqa: SLF001 - the token the client was given
        assert logging.getLogger("httpcore").getEffectiveLevel() >= logging.WARNING
        assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
        logging.getLogger("httpx").warning("sent Authorization: Zoho-oauthtoken %s", token)
        logging.getLogger("syncd.test").warning("refresh form %s", crm_settings.refresh_token.reveal())
    finally:
        log.configure(level=logging.INFO)
    text = stream.getvalue()
    assert "Zoho-oauthtoken ***" in text and "refresh form ***" in text
    assert leaks(text, [*secrets_of(crm_server), ("CRM access token", token)]) == []


def test_scanner_fails_a_test_that_prints_a_secret(tmp_path: Path):
    """The suite-wide plugin errors a test whose output, or a subprocess's log, holds its IMAP password; it names the kind."""
    (tmp_path / "test_leaky.py").write_text(textwrap.dedent("""
        from tests.fixtures.dovecot import dovecot, imap_user  # noqa: F401

        def test_prints_password(imap_user):
            print("debug:", imap_user.password)

        def test_subprocess_logs_password(imap_user):
            import subprocess, sys
            code = "import logging; from syncd import log; log.configure(); logging.getLogger('x').warning('pw %s', sys.argv[1])"
            subprocess.run([sys.executable, "-c", "import sys; " + code, imap_user.password], capture_output=True, check=True)
    """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.fixtures.secret_scan",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_leaky.py")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    # the print, and the subprocess's log line (CI=true makes pytest repeat each in its summary: count tests, not lines)
    leaky = set(re.findall(r"test_leaky\.py::(\w+) holds: IMAP password", done.stdout))
    assert leaky == {"test_prints_password", "test_subprocess_logs_password"}, done.stdout
