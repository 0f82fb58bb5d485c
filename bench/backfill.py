"""Benchmark: a backfill (`once --since`) of a mailbox in a real Dovecot, interrupted half-way and resumed.

    .venv/bin/python -m bench.backfill [--messages 2000] [--old-share 0.5]

Half the corpus (``--old-share``) gets an internal date before the backfill day. Prints the
time to leave the old mail out (recorded as skipped, unfetched), the first pass's rate until
it is stopped half-way, the resumed pass's rate and how long it took to send again, the
CRM writes (each message once), and what `syncd status` and a /metrics scrape cost on the
resulting ledger.
"""

from __future__ import annotations

import argparse
import secrets
import time
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.corpus import OWN, corpus
from syncd import log, metrics
from syncd.app import App
from syncd.ledger import State
from syncd.sandbox import SandboxServer
from syncd.settings import LedgerSettings, Secret, Settings
from syncd.status import collect
from tests.fixtures.crm import settings_for
from tests.fixtures.dovecot import ImapUser, running

SINCE = date(2026, 1, 1)
OLD, NEW = datetime(2025, 6, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)


class StopAfter:
    """A metrics watcher that stops the app after ``n`` verdicts and notes when the first verdict came."""

    def __init__(self, app: App, n: int):
        self.app, self.n, self.seen, self.first = app, n, 0, None

    def folder_started(self, mailbox: str, folder: str, todo: int) -> None:
        pass

    def message_recorded(self, mailbox: str, folder: str, state: State) -> None:
        self.first = self.first or time.perf_counter()
        self.seen += 1
        if self.seen >= self.n:
            self.app.stopping.set()


def timed_pass(app: App, stop_after: int) -> tuple[float, float, int]:
    """(seconds until the first verdict, seconds in all, verdicts) of one backfill pass."""
    watcher = StopAfter(app, stop_after)
    start = time.perf_counter()
    with metrics.watching(watcher):
        app.once(since=SINCE)
    return (watcher.first or time.perf_counter()) - start, time.perf_counter() - start, watcher.seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--old-share", type=float, default=0.5)
    args = parser.parse_args()
    log.configure(stream=open("/dev/null", "w"), json=True)

    with running("bf") as server, SandboxServer() as crm, TemporaryDirectory() as tmp:
        user = ImapUser(server, f"bench{secrets.token_hex(3)}", secrets.token_urlsafe(12))
        server.add_user(user.username, user.password)
        messages, people = corpus(args.messages, people=50)
        crm.seed("Contacts", [{"Last_Name": n, "Full_Name": n, "Email": a} for n, a in people])
        old = int(len(messages) * args.old_share)
        user.append_many("INBOX", messages[:old], internaldate=OLD)
        user.append_many("INBOX", messages[old:], internaldate=NEW)
        inside = len(messages) - old
        settings = Settings(crm=settings_for(crm), ledger=LedgerSettings(Path(tmp) / "ledger.sqlite3"),
                            mailboxes=(user.settings(addresses=(OWN,), password=Secret(user.password)),))

        app = App(settings)
        try:
            window, first_total, first_done = timed_pass(app, inside // 2)
        finally:
            app.close()
        writes_first = len(crm.received())
        app = App(settings)
        try:
            restart, second_total, second_done = timed_pass(app, inside + 1)
            start = time.perf_counter()
            statuses = collect(settings.mailboxes, app.ledger.polls(), app.ledger.counts())
            status_ms = (time.perf_counter() - start) * 1000
            with metrics.MetricsServer("127.0.0.1", 0, app.readiness) as endpoint:
                start = time.perf_counter()
                body = urllib.request.urlopen(f"http://127.0.0.1:{endpoint.address[1]}/metrics").read()
                scrape_ms = (time.perf_counter() - start) * 1000
        finally:
            app.close()

    print(f"corpus: {len(messages)} messages, {old} received before {SINCE} (left out), {inside} since")
    print(f"first pass: {window:.2f}s to scan and record the {old} old ones as skipped, then "
          f"{first_done} verdicts in {first_total - window:.1f}s ({first_done / (first_total - window):.1f} msg/s), stopped")
    print(f"resumed pass: first verdict after {restart:.2f}s, {second_done} more verdicts in {second_total:.1f}s "
          f"({second_done / (second_total - restart):.1f} msg/s)")
    pairs = {(e.module, e.record_id, e.original_message_id) for e in crm.received()}
    print(f"CRM associate_email writes: {writes_first} in the first pass, {len(crm.received())} in all, "
          f"{len(pairs)} distinct (message, record) pairs; {statuses[0].counts.get(State.DONE, 0)} messages done")
    print(f"syncd status over the ledger: {status_ms:.1f} ms; /metrics scrape: {scrape_ms:.1f} ms, {len(body)} bytes")


if __name__ == "__main__":
    main()
