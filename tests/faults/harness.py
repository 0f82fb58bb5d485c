"""Crash harness: syncd as real processes against a real Dovecot and the sandbox CRM, killed and restarted.

Shared by the fault tests (``tests/faults/``) and ``bench/faults.py``. The pieces:

- ``RecordingSandbox``: the sandbox CRM, also keeping every associate_email answer it gave.
- ``Mailbox``: a seeded corpus (``bench.corpus``) appended to an IMAP user, received mail in
  INBOX and sent mail in Sent, and a config file pointing syncd at it and at the sandbox.
- ``crash_until_done``: runs ``syncd once`` again and again, each time killed with SIGKILL at
  a seeded random moment — at a named crash point (``SYNCD_TEST_KILL_AT``, see
  ``syncd.faultpoints``) or after a random delay — until a run finishes cleanly;
  ``crash_daemon`` does the same to ``syncd run``. The seed makes a failure replay.
- ``judge`` / ``assert_exactly_once``: compare what the CRM holds with a fault-free reference
  run of the same mailbox into a twin sandbox: losses, duplicates, stray associations, and
  the resends Zoho answered DUPLICATE_DATA; plus ledger rows left unfinished (``unfinished``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Protocol

from bench.corpus import OWN, correspondents, message
from syncd.faultpoints import ENV as KILL_ENV
from syncd.faultpoints import POINTS
from syncd.ledger import FINAL
from syncd.sandbox import SandboxServer
from syncd.sandbox.server import Fault, Request, Response

RUN_TIMEOUT = 120.0
"""A run that neither finishes nor gets killed in this long is hung: a failure, not a wait."""
TIMER_KILL_AFTER = (0.3, 1.5)
"""Random-time kills land this many seconds after start: from start-up to deep into a pass."""
CROSSINGS = {"checkpoint": 2}
"""The highest N of ``POINT:N`` drawn per point: a pass crosses ``checkpoint`` once per folder."""
MAX_CROSSING = 3

AssociationKey = tuple[str, str, str]
"""(module, the record's email, original_message_id): comparable between two sandboxes."""


class RecordingSandbox(SandboxServer):
    """The sandbox CRM, also keeping ``answers``: (module, record id, original_message_id, Zoho code) per associate_email."""

    def __init__(self, **kwargs) -> None:
        # Every restarted process refreshes its token once; Zoho's 10 refreshes per 10 minutes would
        # throttle a crash loop of hundreds of runs. Refresh limits are the flaky-CRM tests' subject.
        kwargs.setdefault("refresh_limit", 1_000_000)
        super().__init__(**kwargs)
        self.answers: list[tuple[str, str, str, str]] = []
        self.arrived: list[tuple[str, str]] = []
        """(method, path) of every request as it arrives, before any injected delay (``requests`` logs it after)."""

    def start(self) -> str:
        url = super().start()
        assert self._httpd is not None
        report = self._httpd.handle_error

        def quiet(request: object, client_address: object) -> None:
            # A client killed mid-request resets its connection: expected here, not worth a traceback.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                report(request, client_address)

        self._httpd.handle_error = quiet  # type: ignore[method-assign]
        return url

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.arrived.append((method, path))
        return super().take_fault(method, path)

    def handle(self, request: Request) -> Response:
        response = super().handle(request)
        parts = request.path.split("/")
        if request.method == "POST" and parts[-2:] == ["actions", "associate_email"]:
            try:
                original = str(request.json()["Emails"][0]["original_message_id"])
            except (ValueError, KeyError, IndexError, TypeError):
                original = ""
            body = response.body if isinstance(response.body, dict) else {}
            item = (body.get("Emails") or [body])[0]
            self.answers.append((parts[-4], parts[-3], original, str(item.get("code", response.status))))
        return response

    def duplicate_answers(self) -> int:
        """How many associate_email calls Zoho answered DUPLICATE_DATA: resends of something it already had."""
        return sum(1 for *_, code in self.answers if code == "DUPLICATE_DATA")

    def associations(self) -> Counter[AssociationKey]:
        """Every stored association, keyed independently of record ids; a count above 1 is a duplicate."""
        keys: Counter[AssociationKey] = Counter()
        for email in self.received():
            record = self.org.record(email.module, email.record_id) or {}
            keys[(email.module, str(record.get("Email", "")).lower(), email.original_message_id)] += 1
        return keys


def seed_people(server: SandboxServer, people: Sequence[tuple[str, str]]) -> None:
    """Half the correspondents as Contacts, the other half as Leads (as ``bench.sync_mailbox`` does)."""
    half = len(people) // 2
    server.seed("Contacts", [{"Last_Name": n, "Full_Name": n, "Email": a} for n, a in people[:half]])
    server.seed("Leads", [{"Last_Name": n, "Full_Name": n, "Email": a} for n, a in people[half:]])


class ImapAccount(Protocol):
    host: str
    port: int
    username: str
    password: str

    def append_many(self, folder: str, messages: Sequence[bytes]) -> list[int]: ...


@dataclass
class Mailbox:
    """A seeded, growing mailbox on an IMAP account, and the syncd config that syncs it into ``server``."""

    account: ImapAccount
    workdir: Path
    seed: int
    people: list[tuple[str, str]] = field(default_factory=lambda: correspondents(12))
    count: int = 0
    copy: ImapAccount | None = None
    """A second mailbox that gets every message too (in reverse order): the same mail seen by two colleagues."""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._rng = random.Random(self.seed)

    def add(self, n: int) -> None:
        """Append ``n`` more corpus messages: mail from us to Sent, the rest to INBOX."""
        batch = [message(self._rng, self.count + i, self.people) for i in range(n)]
        self.count += n
        ours = [OWN in str(BytesHeaderParser().parsebytes(m)["From"]) for m in batch]
        for account, order in ((self.account, 1), (self.copy, -1)):
            if account is not None:
                account.append_many("Sent", [m for m, mine in zip(batch, ours) if mine][::order])
                account.append_many("INBOX", [m for m, mine in zip(batch, ours) if not mine][::order])

    def config(self, server: SandboxServer, name: str = "syncd", *, poll_interval: int = 1,
               ledger: Path | None = None, crm_timeout: float = 10) -> Path:
        """A config file syncing this mailbox into ``server`` with a ledger of its own (default ``<name>.sqlite3``).

        ``crm_timeout``: longer than a test holds a request in the sandbox (``tests.fixtures.crm.Hold``).
        """
        client_id, client_secret, refresh_token = server.credentials()
        path = self.workdir / f"{name}.toml"
        path.write_text(f"""
[crm]
client_id = "{client_id}"
client_secret = "{client_secret}"
refresh_token = "{refresh_token}"
api_domain = "{server.url}"
accounts_url = "{server.url}"
timeout = {crm_timeout:g}

[ledger]
path = "{ledger or self.workdir / f'{name}.sqlite3'}"

""" + "".join(_mailbox_table(n, a, poll_interval) for n, a in (("faults", self.account), ("faults-copy", self.copy))
                        if a is not None))
        return path


def _mailbox_table(name: str, account: ImapAccount, poll_interval: int) -> str:
    return f"""
[[mailbox]]
name = "{name}"
host = "{account.host}"
port = {account.port}
security = "none"
username = "{account.username}"
password = "{account.password}"
addresses = ["{OWN}"]
poll_interval = {poll_interval}
"""


def syncd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "syncd", "--log-format", "json", *args]


def syncd(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one syncd command to its end (no crash point armed)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    return subprocess.run(syncd_command(*args), capture_output=True, text=True, timeout=timeout, env=env)


@dataclass(frozen=True)
class Kill:
    """Where one run is to die: at the Nth crossing of a crash point, or ``after`` seconds (a timer)."""

    point: str | None = None
    nth: int = 0
    after: float | None = None

    @property
    def label(self) -> str:
        return self.point or "timer"


def draw_kill(rng: random.Random, *, timer_share: float = 0.3) -> Kill:
    if rng.random() < timer_share:
        return Kill(after=rng.uniform(*TIMER_KILL_AFTER))
    point = rng.choice(POINTS)
    return Kill(point=point, nth=rng.randint(1, CROSSINGS.get(point, MAX_CROSSING)))


@dataclass
class Tally:
    """What a crash run did: kills by where they landed, runs, and the runs that finished cleanly."""

    kills: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    clean: int = 0

    @property
    def killed(self) -> int:
        return sum(self.kills.values())

    def add(self, other: Tally) -> None:
        self.kills.update(other.kills)
        self.runs += other.runs
        self.clean += other.clean

    def line(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items()))
        return f"kills {self.killed} ({where}) in {self.runs} runs"


def run_killed(args: Sequence[str], kill: Kill, log: Path, *, window: float | None = None) -> int | None:
    """Start ``syncd ARGS`` armed with ``kill``; SIGKILL it at ``kill.after`` (or ``window``) if still alive.

    Returns the exit code, or None when this harness had to kill it (a timer kill).
    """
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill.point:
        env[KILL_ENV] = f"{kill.point}:{kill.nth}"
    limit = kill.after if kill.after is not None else window if window is not None else RUN_TIMEOUT
    with log.open("ab") as err:
        proc = subprocess.Popen(syncd_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            if kill.after is None and window is None:
                raise AssertionError(f"syncd {' '.join(args)} hung for {limit}s; log: {log}") from None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None


def crash_until_done(config: Path, rng: random.Random, *, max_runs: int = 200, timer_share: float = 0.3,
                     deferrals: bool = False) -> Tally:
    """``syncd once`` killed at random moments, restarted, until one run exits 0 (every message final).

    ``deferrals``: a run may end with messages deferred for retry (a message another mailbox of
    the same process was delivering at that moment); they are made due at once and the runs go on.
    """
    tally = Tally()
    log = config.with_suffix(".log")
    while tally.runs < max_runs:
        kill = draw_kill(rng, timer_share=timer_share)
        tally.runs += 1
        code = run_killed(["once", "-c", str(config)], kill, log)
        if code is None or code == -signal.SIGKILL:
            tally.kills[kill.label] += 1
        elif code == 0:
            tally.clean += 1
            return tally
        elif code == 1 and deferrals:
            make_due(config)
        else:
            raise AssertionError(f"syncd once exited {code} without being killed; log: {log}")
    raise AssertionError(f"not done after {max_runs} runs ({tally.line()}); log: {log}")


def crash_daemon(config: Path, rng: random.Random, kills: int, *, window: float = 4.0) -> Tally:
    """``syncd run`` killed ``kills`` times at random moments (a crash point not reached within ``window``: a timer kill)."""
    tally = Tally()
    log = config.with_suffix(".log")
    while tally.killed < kills:
        kill = draw_kill(rng)
        tally.runs += 1
        code = run_killed(["run", "-c", str(config)], kill, log, window=window)
        if code is None:
            tally.kills["timer" if kill.point is None else "window"] += 1
        elif code == -signal.SIGKILL:
            tally.kills[kill.label] += 1
        else:
            raise AssertionError(f"syncd run exited {code} without being killed; log: {log}")
    return tally


@dataclass
class Verdict:
    """The CRM compared with a fault-free reference run of the same mail."""

    expected: int
    losses: list[AssociationKey]
    duplicates: list[AssociationKey]
    strays: list[AssociationKey]
    """Associations the reference run did not make (e.g. an unstable fallback Message-ID after a crash)."""
    duplicate_answers: int
    """Resends Zoho answered DUPLICATE_DATA: each must follow a crash that hid the first send's outcome."""

    def line(self) -> str:
        return (f"expected {self.expected} associations: losses {len(self.losses)}, duplicates {len(self.duplicates)}, "
                f"strays {len(self.strays)}; resends answered DUPLICATE_DATA {self.duplicate_answers}")


def make_due(config: Path) -> None:
    """Messages deferred for retry become due now (``syncd ledger retry --state retry``)."""
    queued = syncd("ledger", "retry", "--state", "retry", "-c", str(config))
    assert queued.returncode == 0, queued.stderr[-3000:]


def reference(mailbox: Mailbox) -> Counter[AssociationKey]:
    """The associations a fault-free ``syncd once`` makes of the whole mailbox, in a twin sandbox and ledger."""
    for old in mailbox.workdir.glob("reference.sqlite3*"):
        old.unlink()  # a fresh ledger: the reference run must send everything
    with RecordingSandbox() as twin:
        seed_people(twin, mailbox.people)
        config = mailbox.config(twin, "reference")
        for _ in range(5):  # with a copy mailbox, a message both are delivering at once is deferred in one
            done = syncd("once", "-c", str(config))
            if done.returncode != 1 or mailbox.copy is None:
                break
            make_due(config)
        assert done.returncode == 0, done.stderr[-3000:]
        assert twin.violations == []
        return twin.associations()


def judge(server: RecordingSandbox, mailbox: Mailbox) -> Verdict:
    expected = reference(mailbox)
    got = server.associations()
    return Verdict(
        expected=len(expected),
        losses=sorted(set(expected) - set(got)),
        duplicates=sorted(k for k, n in got.items() if n > 1),
        strays=sorted(set(got) - set(expected)),
        duplicate_answers=server.duplicate_answers(),
    )


def assert_exactly_once(crm: RecordingSandbox, mailbox: Mailbox, config: Path, *, faults: int, note: str = "",
                        ledger: Path | None = None) -> Verdict:
    """The CRM holds what a fault-free run makes of the mailbox, the ledger is settled, and at most one
    DUPLICATE_DATA resend per fault (a kill or cut can hide one send's outcome, no more)."""
    verdict = judge(crm, mailbox)
    replay = f"seed {mailbox.seed}: {note}; {verdict.line()}"
    print(f"\n{replay}")
    assert verdict.expected > mailbox.count // 3, "the corpus must exercise deliveries"
    assert verdict.losses == [], replay
    assert verdict.duplicates == [], replay
    assert verdict.strays == [], replay
    assert verdict.duplicate_answers <= faults, replay
    left = unfinished(ledger or config.parent / "syncd.sqlite3")
    assert left == [], f"{replay}; unfinished: {left[:5]}"
    assert crm.violations == [], crm.violations[:3]
    return verdict


def query(ledger: Path, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    """Rows of a read-only query on a ledger file (syncd may be running)."""
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        return db.execute(sql, params).fetchall()


def unfinished(ledger: Path) -> list[tuple]:
    """Ledger rows not in a final state once syncd says it is done: pending deliveries, non-final messages."""
    final = tuple(sorted(FINAL))
    marks = ",".join("?" * len(final))
    return query(ledger, f"SELECT 'message', message_id, state FROM messages WHERE state NOT IN ({marks}) UNION ALL "
                         f"SELECT 'delivery', message_id, state FROM deliveries WHERE state NOT IN ({marks})", final + final)
