"""A misbehaving Zoho (5xx, 429, resets, slow answers, expired and throttled tokens, org-wide refusals):
nothing lost, nothing sent twice, the daemon goes on and drains its backlog by itself.

`SYNCD_SOAK=N` multiplies the random fault run's messages and faults by N (e.g. 20 for a long soak).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from syncd.app import App
from syncd.ledger import State
from syncd.ledger.sqlite import SqliteLedger
from syncd.pipeline import PassReport
from syncd.sandbox import SandboxServer
from syncd.settings import LedgerSettings, Settings
from tests.faults.conftest import SOAK
from tests.faults.daemon import all_final, copies, daemon, ledger_states, new_user, write_config
from tests.fixtures.crm import CONTACTS, LEADS, exchange_code, settings_for
from tests.fixtures.dovecot import Dovecot, ImapUser
from tests.fixtures.wait import wait_until
from tests.test_pipeline import OWN, mail, syncd

PEOPLE = ["bob@example.com", "lena@prospect.example", "jacob@example.com"]


def _message(i: int, *, attach: bool = False) -> bytes:
    m: EmailMessage = mail(PEOPLE[i % len(PEOPLE)], OWN, f"Order {i}", f"Body {i}", message_id=f"<f{i}@flaky.example>")
    if attach:
        m.add_attachment(f"file {i}".encode() * 50, maintype="application", subtype="pdf", filename=f"f{i}.pdf")
    return bytes(m)


def _expected(server: SandboxServer, n: int) -> set[tuple[str, str, str]]:
    record = {PEOPLE[0]: ("Contacts", server.contact_ids[0]), PEOPLE[1]: ("Leads", server.lead_ids[0]),
              PEOPLE[2]: ("Contacts", server.contact_ids[1])}
    return {(f"f{i}@flaky.example", *record[PEOPLE[i % len(PEOPLE)]]) for i in range(n)}


@contextlib.contextmanager
def _seeded(**org: int) -> Iterator[SandboxServer]:
    """A sandbox configured otherwise than ``crm_server``, holding the same records."""
    with SandboxServer(**org) as server:
        server.contact_ids = server.seed("Contacts", CONTACTS)  # type: ignore[attr-defined]
        server.lead_ids = server.seed("Leads", LEADS)  # type: ignore[attr-defined]
        yield server


def _exactly_once(server: SandboxServer, n: int) -> bool:
    return set(copies(server)) == _expected(server, n)


# -- outcome unknown: the answer is lost, the resend is recognised ------------------------------------

@pytest.mark.parametrize("fault", [{"reset_after": True}, {"delay": 2.5}], ids=["reset-after-processing", "answer-after-timeout"])
def test_outcome_unknown_is_resent_by_the_daemon_and_lands_once(tmp_path: Path, imap_user: ImapUser,
                                                                crm_server: SandboxServer, fault: dict):
    """A lost associate answer (reset after Zoho stored it, or later than the timeout) is resent by itself; one copy in Zoho."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, timeout=1)
    imap_user.append_many("INBOX", [_message(i) for i in range(3)])
    crm_server.inject(r"associate_email", times=1, **fault)
    with daemon(config) as d:
        wait_until(lambda: _exactly_once(crm_server, 3) and all_final(config, 3), "3 messages final", proc=d.proc)
    assert max(copies(crm_server).values()) == 1 and crm_server.violations == []
    assert any(e.get("event") == "resend_unknown_outcome" for e in d.events)


# -- 429: slow down, honour Retry-After ------------------------------------------------------------------

def test_rate_limit_slows_every_call_down_and_honours_retry_after(tmp_path: Path, imap_user: ImapUser,
                                                                  crm_server: SandboxServer):
    """After a 429 with Retry-After: 2 no request reaches Zoho for 2 s; the message is retried and lands once."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    imap_user.append_many("INBOX", [_message(i) for i in range(2)])
    crm_server.inject(r"associate_email", status=429, headers={"Retry-After": "2"})
    # When each request reached the sandbox, and when the 429 was given (the sandbox's own hooks, wrapped).
    stamps: list[float] = []
    limited_at: list[float] = []
    handle, take = crm_server.handle, crm_server.take_fault
    crm_server.handle = lambda request: (stamps.append(time.monotonic()), handle(request))[1]  # type: ignore[method-assign]

    def take_and_note(method: str, path: str):
        found = take(method, path)
        if found is not None:
            limited_at.append(time.monotonic())
        return found

    crm_server.take_fault = take_and_note  # type: ignore[method-assign]
    with daemon(config) as d:
        wait_until(lambda: _exactly_once(crm_server, 2) and all_final(config, 2), "2 messages final", proc=d.proc)
    (at,) = limited_at
    assert not [s for s in stamps if at < s < at + 1.9], "a request went out during the Retry-After pause"
    assert any(e.get("event") == "crm_rate_limited" and e.get("pause") == 2.0 for e in d.events)


# -- org-wide refusals: pause, say the fix, drain by itself -------------------------------------------

ORG_FAULTS = {
    "no-permission": (r"associate_email", 403, "NO_PERMISSION", "Profiles"),
    "scope-mismatch": (r"/(search|coql)$", 401, "OAUTH_SCOPE_MISMATCH", "ZohoCRM.modules.emails.ALL"),
}


@pytest.mark.parametrize("name", list(ORG_FAULTS))
def test_org_error_pauses_with_the_fix_then_drains_by_itself(tmp_path: Path, imap_user: ImapUser,
                                                             crm_server: SandboxServer, name: str):
    """An org-wide refusal pauses CRM work with the fix in the log; once Zoho accepts again, the daemon delivers all by itself."""
    path, status, code, fix = ORG_FAULTS[name]
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    imap_user.append_many("INBOX", [_message(i) for i in range(3)])
    body = {"code": code, "details": {}, "message": "refused", "status": "error"}
    crm_server.inject(path, status=status, body={"Emails": [body]} if "associate" in path else body, times=4)
    with daemon(config) as d:
        wait_until(lambda: _exactly_once(crm_server, 3) and all_final(config, 3), "3 messages final", proc=d.proc)
    paused = [e for e in d.events if e.get("event") == "crm_paused"]
    assert len(paused) >= 2 and all(e["code"] == code and fix in e["error"] for e in paused)
    assert not crm_server._faults  # every refusal was met, and the daemon went on past them
    assert "nothing is lost" in paused[0]["action"]
    assert max(copies(crm_server).values()) == 1


def test_full_storage_pauses_until_space_is_freed(tmp_path: Path, imap_user: ImapUser):
    """STORAGE_SPACE_EXCEEDS from a real upload pauses the mailbox; freeing space lets the daemon go on alone."""
    with _seeded(storage_left=100) as server:
        config = write_config(tmp_path / "syncd.toml", server, {"sales": imap_user})
        imap_user.append_many("INBOX", [_message(i, attach=True) for i in range(2)])
        with daemon(config) as d:
            wait_until(lambda: ledger_states(config)[State.RETRY] == 1, "a message waiting for storage", proc=d.proc)
            assert server.received() == []
            server.org.storage_left = None  # the operator bought storage
            wait_until(lambda: _exactly_once(server, 2) and all_final(config, 2), "2 messages final", proc=d.proc)
        assert max(copies(server).values()) == 1
        paused = [e for e in d.events if e.get("event") == "crm_paused"]
        assert paused and all(e["code"] == "STORAGE_SPACE_EXCEEDS" and "buy storage" in e["error"] for e in paused)


def test_refused_refresh_token_says_which_setting_and_loses_nothing(tmp_path: Path, imap_user: ImapUser,
                                                                    crm_server: SandboxServer):
    """A revoked refresh token: `once` exits 1 naming crm.refresh_token, keeps the mail; with the new token it is delivered."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    imap_user.append_many("INBOX", [_message(i) for i in range(2)])
    good = crm_server.org.refresh_token
    crm_server.org.refresh_token = "1000.revoked"
    refused = syncd("once", "-c", str(config))
    assert refused.returncode == 1 and "crm.refresh_token" in refused.stdout + refused.stderr
    assert good not in refused.stdout + refused.stderr
    assert crm_server.received() == [] and set(ledger_states(config)) <= {State.RETRY}  # nothing final, nothing lost
    crm_server.org.refresh_token = good
    assert syncd("once", "-c", str(config)).returncode == 0
    assert _exactly_once(crm_server, 2)


def test_revoked_refresh_token_replaced_in_its_file_is_used_without_a_restart(tmp_path: Path, imap_user: ImapUser,
                                                                            crm_server: SandboxServer):
    """`syncd run` with refresh_token_file: after a revocation passes pause on invalid_code without hammering Zoho; a new
    token written into the file is used at the next poll, and the same daemon delivers the waiting message once."""
    token_file = tmp_path / "refresh_token"
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, refresh_token_file=token_file)
    imap_user.append("INBOX", _message(0))
    with daemon(config) as d:
        wait_until(lambda: _exactly_once(crm_server, 1) and all_final(config, 1), "the first message delivered", proc=d.proc)
        revoked = httpx.post(f"{crm_server.url}/oauth/v2/token/revoke", params={"token": token_file.read_text().strip()})
        assert revoked.status_code == 200  # Zoho also revokes the access tokens the daemon holds
        imap_user.append("INBOX", _message(1))
        wait_until(lambda: d.logged("crm_paused"), "a pass paused by the revoked token", proc=d.proc)
        refreshes = _token_requests(crm_server)
        wait_until(lambda: len(d.logged("crm_paused")) >= 3, "two more polls", proc=d.proc)
        assert _token_requests(crm_server) == refreshes, "a refused refresh is held, not repeated at every poll"
        new = exchange_code(crm_server, crm_server.grant_code())["refresh_token"]  # the operator, in the API console
        token_file.write_text(new + "\n")
        wait_until(lambda: _exactly_once(crm_server, 2) and all_final(config, 2), "the waiting message delivered", proc=d.proc)
    paused = [e for e in d.events if e.get("event") == "crm_paused"]
    assert len(paused) >= 3 and all(e["code"] == "invalid_code" and "crm.refresh_token" in e["error"] for e in paused)
    (changed,) = [e for e in d.events if e.get("event") == "crm_credentials_changed"]
    assert changed["changed"] == ["crm.refresh_token"]
    assert max(copies(crm_server).values()) == 1 and crm_server.violations == []
    assert new not in d.stderr


def _token_requests(server: SandboxServer) -> int:
    return server.requests.count(("POST", "/oauth/v2/token"))


# -- tokens: no refresh storm with several mailboxes -------------------------------------------------

def _app(tmp_path: Path, server: SandboxServer, users: list[ImapUser]) -> App:
    mailboxes = tuple(u.settings(addresses=(OWN,), poll_interval=1.0) for u in users)
    return App(Settings(crm=settings_for(server), ledger=LedgerSettings(tmp_path / "l.sqlite3"), mailboxes=mailboxes))


def _expire_between_passes(app: App, server: SandboxServer, users: list[ImapUser]) -> list[PassReport]:
    """A message per mailbox and a pass (one refresh), the token expired, a message more each: the second pass's reports."""
    for n, u in enumerate(users):
        u.append("INBOX", _message(n))
    assert all(r.complete for r in app.once())
    server.expire_tokens()
    for n, u in enumerate(users):
        u.append("INBOX", _message(n + len(users)))
    return app.once()


def test_expired_token_is_refreshed_once_for_all_mailbox_threads(tmp_path: Path, dovecot: Dovecot):
    """Six mailboxes in parallel, token expired mid-run, Zoho allowing 2 refreshes: exactly one refresh, every message once."""
    users = [new_user(dovecot) for _ in range(6)]
    with _seeded(refresh_limit=2) as server:
        app = _app(tmp_path, server, users)
        try:
            assert all(r.complete for r in _expire_between_passes(app, server, users))
            assert app.crm.calls["token"] == 2
        finally:
            app.close()
        assert _exactly_once(server, 12)


def test_throttled_token_endpoint_is_not_hammered_and_nothing_is_lost(tmp_path: Path, dovecot: Dovecot):
    """Zoho answering "Access Denied" to refreshes: one refresh attempt for six mailboxes, the mail waits in retry, then arrives once."""
    users = [new_user(dovecot) for _ in range(6)]
    with _seeded(refresh_limit=1) as server:
        app = _app(tmp_path, server, users)
        try:
            reports = _expire_between_passes(app, server, users)  # the first pass used the one refresh allowed
            assert app.crm.calls["token"] == 2, "one refused refresh, then the client waits instead of asking again"
            assert not any(r.complete for r in reports)
            assert len(server.received()) == 6
        finally:
            app.close()
        rows = SqliteLedger(tmp_path / "l.sqlite3")
        try:
            waiting = rows.messages(states=[State.RETRY])
            assert {r.state for r in waiting} == {State.RETRY} and len(waiting) == 6
            assert all(r.retry_at > datetime.now(UTC) + timedelta(seconds=50) for r in waiting)
            rows.retry(states=[State.RETRY])  # a minute later: due (the daemon would simply wait)
        finally:
            rows.close()
        server.org.refresh_limit = 10  # Zoho's window has passed
        app = _app(tmp_path, server, users)
        try:
            assert all(r.complete for r in app.once())
        finally:
            app.close()
        assert _exactly_once(server, 12)


# -- permanent per-message refusals ------------------------------------------------------------------

@pytest.mark.parametrize("code", ["INVALID_DATA", "MANDATORY_NOT_FOUND", "FILE_SIZE_EXCEEDS"])
def test_permanent_refusal_quarantines_only_that_message(tmp_path: Path, imap_user: ImapUser,
                                                         crm_server: SandboxServer, code: str):
    """A per-message refusal quarantines that message with Zoho's code; the others are delivered."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    imap_user.append_many("INBOX", [_message(i) for i in range(3)])
    crm_server.inject(r"associate_email", status=400,
                      body={"Emails": [{"code": code, "details": {}, "message": "refused", "status": "error"}]})
    assert syncd("once", "-c", str(config)).returncode == 0
    assert len(crm_server.received()) == 2
    listed = syncd("ledger", "list", "--state", "quarantined", "-c", str(config)).stdout
    assert code in listed and "f0@flaky.example" in listed


# -- the random run: every kind of fault, seeded -----------------------------------------------------

FAULTS = [
    ("associate_email", {"status": 500}), ("associate_email", {"status": 503}),
    ("associate_email", {"status": 429}), ("associate_email", {"status": 429, "headers": {"Retry-After": "1"}}),
    ("associate_email", {"reset_before": True}), ("associate_email", {"reset_after": True}),
    ("associate_email", {"delay": 1.6}),
    ("/files", {"status": 500}), ("/files", {"reset_after": True}), ("/files", {"delay": 1.6}),
    ("/search$", {"status": 500}), ("/search$", {"status": 429}), ("/search$", {"reset_before": True}),
    ("/coql$", {"status": 500}), ("/coql$", {"status": 429}), ("/coql$", {"reset_after": True}),
]
TOKEN_FAULTS = [("/oauth/v2/token", {"status": 500}), ("/oauth/v2/token", {"status": 503})]
"""Each refresh after an expiry meets one (refreshes back off 2, 4, 8 ... s: a few keep the run short)."""
EXPIRIES = 3


@pytest.mark.parametrize("seed", [1])
@pytest.mark.timeout(120 * SOAK + 60)
def test_random_faults_deliver_every_message_exactly_once(tmp_path: Path, imap_user: ImapUser,
                                                          crm_server: SandboxServer, seed: int):
    """Seeded random 5xx, 429, resets, slow answers and token expiries while the daemon runs: 0 lost, 0 duplicates."""
    rng = random.Random(seed)
    n, n_faults = 20 * SOAK, 24 * SOAK
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, timeout=1)
    imap_user.append_many("INBOX", [_message(i, attach=rng.random() < 0.3) for i in range(n)])
    for path, fault in [rng.choice(FAULTS) for _ in range(n_faults)] + TOKEN_FAULTS:
        crm_server.inject(path, **fault)
    expiries = EXPIRIES * SOAK
    stop = threading.Event()

    def expire_now_and_then() -> None:
        for _ in range(expiries):
            if stop.wait(rng.uniform(0.2, 1.5)):
                return
            crm_server.expire_tokens()

    expirer = threading.Thread(target=expire_now_and_then)
    with daemon(config) as d:
        expirer.start()
        try:
            wait_until(lambda: _exactly_once(crm_server, n) and all_final(config, n), f"{n} messages final",
                       proc=d.proc, timeout=120 * SOAK)
        finally:
            stop.set()
            expirer.join()
    landed = copies(crm_server)
    duplicates = sum(c - 1 for c in landed.values())
    left = len(crm_server._faults)
    print(f"\nflaky CRM seed {seed}: faults injected {n_faults + len(TOKEN_FAULTS) - left} (+{expiries} token expiries), "
          f"messages delivered {len(landed)}/{n}, duplicates {duplicates}, "
          f"DUPLICATE_DATA answers {ledger_states(config)[State.DUPLICATE]}")
    assert duplicates == 0 and crm_server.violations == []
