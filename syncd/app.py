"""Wiring: one CRM client, one ledger, one matcher, and a MailboxSync per configured mailbox."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import structlog

from syncd import metrics
from syncd.associate import Deliverer
from syncd.deals import DealPredictor
from syncd.owner import MailboxOwner
from syncd.crm import Crm
from syncd.crm.zoho import ZohoCrm
from syncd.errors import MailboxBusy, SyncdError
from syncd.ledger.sqlite import SqliteLedger
from syncd.lookup import RecordLookup
from syncd.match import Matcher
from syncd.pipeline import MailboxSync, PassReport
from syncd.settings import MailboxSettings, Settings
from syncd.source import MailSource, open_source

log = structlog.get_logger("syncd.app")


class App:
    """Everything one syncd process holds open; ``close`` releases it."""

    def __init__(self, settings: Settings, *, stopping: threading.Event | None = None,
                 source_factory: Callable[[MailboxSettings], MailSource] = open_source,
                 crm: Crm | None = None):
        self.settings = settings
        self.stopping = stopping or threading.Event()
        self.ledger = SqliteLedger(settings.ledger.path)
        self.crm = crm or ZohoCrm(settings.crm)
        matcher = Matcher(RecordLookup(self.crm))
        deals = DealPredictor(self.crm)
        self.owners = {m.name: MailboxOwner(self.crm, mailbox=m.name, owner_id=m.owner_id, owner_email=m.owner_email)
                       for m in settings.mailboxes}
        self.syncs = {
            m.name: MailboxSync(
                m, ledger=self.ledger, matcher=matcher,
                # transient faults: first retried at about the next poll, then ever more slowly
                deliverer=Deliverer(self.crm, self.ledger, mailbox=m.name, owner=self.owners[m.name],
                                    deals=deals if m.predict_deals else None, retry_base=m.poll_interval / 2),
                stopping=self.stopping, source_factory=source_factory,
            )
            for m in settings.mailboxes
        }

    def safe_pass(self, name: str, since: date | None = None) -> PassReport:
        """One pass of one mailbox that never raises: failures land in the report, the log, the metrics
        and the ledger's poll record (what ``syncd status`` shows)."""
        report = self._pass(name, since)
        metrics.pass_done(name, complete=report.complete, failed=bool(report.errors))
        if report.error_kind == MailboxBusy.__name__:
            return report  # this process did not poll: the lock holder's own record stands
        try:
            self.ledger.record_poll(name, error="; ".join(report.errors), error_kind=report.error_kind)
        except SyncdError as exc:
            log.error("poll_not_recorded", mailbox=name, error=str(exc))
        return report

    def _pass(self, name: str, since: date | None) -> PassReport:
        try:
            return self.syncs[name].run_pass(since)
        except MailboxBusy as exc:
            log.warning("mailbox_busy", mailbox=name, error=str(exc))
            return PassReport(name, errors=[str(exc)], error_kind=MailboxBusy.__name__)
        except SyncdError as exc:
            log.error("pass_failed", mailbox=name, error=str(exc), kind=type(exc).__name__)
            report = PassReport(name, error_kind=type(exc).__name__)
            report.errors.append(str(exc))
            return report
        except Exception as exc:  # a bug must not kill the daemon: log it whole, go on
            log.exception("pass_crashed", mailbox=name, error=repr(exc))
            report = PassReport(name, error_kind="internal")
            report.errors.append(f"internal error: {exc!r}")
            return report

    def readiness(self) -> list[str]:
        """What keeps this process from syncing (empty: ready): the ledger unreadable, no CRM token to be had."""
        problems = []
        try:
            self.ledger.polls()
        except SyncdError as exc:
            problems.append(f"ledger: {exc}")
        try:
            self.crm.ensure_token()
        except SyncdError as exc:
            problems.append(f"crm: {exc}")
        return problems

    def once(self, names: list[str] | None = None, since: date | None = None) -> list[PassReport]:
        """One pass over the named (default: every) mailbox, in parallel; reports in config order.

        ``since``: a backfill of the mail received on or after that day (``syncd once --since``).
        """
        names = names or list(self.syncs)
        with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="mailbox") as pool:
            return list(pool.map(lambda name: self.safe_pass(name, since), names))

    def close(self) -> None:
        self.crm.close()
        self.ledger.close()
