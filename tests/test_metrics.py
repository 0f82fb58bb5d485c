"""Metrics and health: the endpoint of a running daemon, per-mailbox and per-CRM-endpoint numbers, readiness."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from syncd.app import App
from syncd.metrics import MetricsServer, parse_listen
from syncd.sandbox import SandboxServer
from syncd.settings import LedgerSettings, Secret, Settings
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.wait import wait_until
from tests.test_pipeline import OWN, config_file, mail  # noqa: F401 - config_file is a fixture

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def app(tmp_path: Path, imap_user: ImapUser, crm_settings) -> App:
    settings = Settings(crm=crm_settings, ledger=LedgerSettings(tmp_path / "l.sqlite3"),
                        mailboxes=(imap_user.settings(addresses=(OWN,)),))
    app = App(settings)
    yield app
    app.close()


def test_parse_listen_defaults_to_loopback():
    """A bare port (or ":port") listens on 127.0.0.1; a host is kept; a bad port is refused."""
    assert parse_listen("9310") == ("127.0.0.1", 9310)
    assert parse_listen(":9310") == ("127.0.0.1", 9310)
    assert parse_listen("0.0.0.0:9310") == ("0.0.0.0", 9310)
    assert parse_listen("[::1]:9310") == ("::1", 9310)
    for bad in ("127.0.0.1:http", "127.0.0.1:0", "70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_bad_listen_is_a_config_error_and_no_metrics_table_means_no_endpoint(config_file: Path):  # noqa: F811
    """Without [metrics] no endpoint is configured; a malformed listen exits 2 naming metrics.listen."""
    from syncd import config

    assert config.load(config_file).metrics.listen is None
    config_file.write_text(config_file.read_text() + '\n[metrics]\nlisten = "localhost:nine"\n')
    done = subprocess.run([sys.executable, "-m", "syncd", "once", "-c", str(config_file)], capture_output=True, text=True)
    assert done.returncode == 2 and f"{config_file}: metrics.listen" in done.stderr


def test_environment_overrides_listen_for_one_instance(config_file: Path):  # noqa: F811
    """$SYNCD_METRICS_LISTEN replaces [metrics] listen (one port per syncd@ instance); a bad value names the variable."""
    from syncd import config
    from syncd.errors import ConfigError

    config_file.write_text(config_file.read_text() + '\n[metrics]\nlisten = "9310"\n')
    assert config.load(config_file, env={"SYNCD_METRICS_LISTEN": "127.0.0.1:9311"}).metrics.listen == ("127.0.0.1", 9311)
    assert config.load(config_file, env={}).metrics.listen == ("127.0.0.1", 9310)
    with pytest.raises(ConfigError, match=r"\$SYNCD_METRICS_LISTEN: .* is not HOST:PORT"):
        config.load(config_file, env={"SYNCD_METRICS_LISTEN": "nine"})


def test_pass_counts_messages_per_mailbox_and_crm_calls_per_endpoint(app: App, imap_user: ImapUser,
                                                                     crm_server: SandboxServer):
    """A pass counts verdicts per mailbox and state, CRM calls and latency per endpoint, and the credits left."""
    name = app.settings.mailboxes[0].name
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Counted", message_id="<c1@x>")))
    imap_user.append("INBOX", bytes(mail("stranger@nowhere.example", OWN, "Nobody", message_id="<c2@x>")))
    calls_before = value("syncd_crm_calls_total", endpoint="associate_email") or 0
    before = time.time()
    assert app.once()[0].complete
    assert value("syncd_messages_total", mailbox=name, state="done") == 1
    assert value("syncd_messages_total", mailbox=name, state="unmatched") == 1
    assert value("syncd_messages_seen_total", mailbox=name) == 2
    assert value("syncd_backlog_messages", mailbox=name) == 0
    assert value("syncd_last_successful_poll_timestamp_seconds", mailbox=name) >= before
    assert value("syncd_passes_total", mailbox=name, outcome="complete") == 1
    assert value("syncd_crm_calls_total", endpoint="associate_email") == calls_before + 1
    assert value("syncd_crm_request_duration_seconds_count", endpoint="associate_email") >= 1
    assert value("syncd_crm_api_credits_remaining") == crm_server.credits


def test_crm_errors_are_counted_by_code_and_unfinished_messages_stay_in_the_backlog(
        app: App, imap_user: ImapUser, crm_server: SandboxServer):
    """503 answers count under their status, dropped connections under 'network'; retrying messages stay backlog."""
    name = app.settings.mailboxes[0].name
    imap_user.append_many("INBOX", [bytes(mail("bob@example.com", OWN, f"Err {i}", message_id=f"<e{i}@x>"))
                                    for i in range(2)])
    e503 = value("syncd_crm_errors_total", endpoint="associate_email", code="503") or 0
    enet = value("syncd_crm_errors_total", endpoint="associate_email", code="network") or 0
    crm_server.inject(r"associate_email", status=503)
    crm_server.inject(r"associate_email", reset_before=True)
    report = app.once()[0]
    assert not report.complete
    assert value("syncd_crm_errors_total", endpoint="associate_email", code="503") == e503 + 1
    assert value("syncd_crm_errors_total", endpoint="associate_email", code="network") == enet + 1
    assert value("syncd_messages_total", mailbox=name, state="retry") == 2
    assert value("syncd_backlog_messages", mailbox=name) == 2
    assert value("syncd_passes_total", mailbox=name, outcome="incomplete") == 1


def test_failed_pass_sets_no_success_time(tmp_path: Path, imap_user: ImapUser, crm_settings):
    """A pass that cannot log in counts as failed: the last-poll time moves, the last-successful-poll time does not."""
    mailbox = imap_user.settings(password=Secret("wrong-password"))
    app = App(Settings(crm=crm_settings, ledger=LedgerSettings(tmp_path / "l.sqlite3"), mailboxes=(mailbox,)))
    try:
        before = time.time()
        assert app.once()[0].errors
    finally:
        app.close()
    assert value("syncd_passes_total", mailbox=mailbox.name, outcome="failed") == 1
    assert value("syncd_last_poll_timestamp_seconds", mailbox=mailbox.name) >= before
    assert value("syncd_last_successful_poll_timestamp_seconds", mailbox=mailbox.name) is None


def test_readyz_names_what_is_missing(app: App, crm_settings, tmp_path: Path, imap_user: ImapUser):
    """/readyz is 200 with a ledger and a CRM token, 503 naming the CRM when the token is refused, /healthz stays 200."""
    with MetricsServer("127.0.0.1", 0, app.readiness) as server:
        base = f"http://127.0.0.1:{server.address[1]}"
        status, body = get(base + "/readyz")
        assert status == 200 and json.loads(body) == {"ready": True, "problems": []}
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/nothing")[0] == 404

    wrong = type(crm_settings)(**{**crm_settings.__dict__, "client_secret": Secret("not-the-secret")})
    broken = App(Settings(crm=wrong, ledger=LedgerSettings(tmp_path / "b.sqlite3"), mailboxes=app.settings.mailboxes))
    broken.ledger.close()
    try:
        with MetricsServer("127.0.0.1", 0, broken.readiness) as server:
            base = f"http://127.0.0.1:{server.address[1]}"
            status, body = get(base + "/readyz")
            problems = json.loads(body)["problems"]
            assert status == 503 and len(problems) == 2
            assert problems[0].startswith("ledger: ") and "invalid_client" in problems[1]
            assert "not-the-secret" not in body
            assert get(base + "/healthz")[0] == 200
    finally:
        broken.crm.close()


def test_running_daemon_serves_metrics_without_addresses_or_message_ids(config_file: Path, imap_user: ImapUser,  # noqa: F811
                                                                        crm_server: SandboxServer):
    """`syncd run` with [metrics] listen serves /metrics, /healthz and /readyz; no label holds an address or id."""
    port = _free_port()
    config_file.write_text(config_file.read_text() + f'\n[metrics]\nlisten = "{port}"\n')
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Watched", message_id="<watched-1@x>")))
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "run", "-c", str(config_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    done = ("syncd_messages_total", (("mailbox", "sales"), ("state", "done")))
    got: dict = {}

    def counted_done() -> bool:
        nonlocal got
        try:
            got = samples(get(base + "/metrics")[1])
        except OSError:  # not listening yet
            got = {}
        return got.get(done, 0) == 1

    try:
        wait_until(counted_done, "/metrics to count the message done", proc=proc)
        assert got[("syncd_messages_total", (("mailbox", "sales"), ("state", "done")))] == 1
        assert got[("syncd_crm_calls_total", (("endpoint", "associate_email"),))] == 1
        assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 200
        labels = [v for (_, pairs) in got for _, v in pairs]
        assert not [v for v in labels if "@" in v or "watched" in v.lower()]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read()
