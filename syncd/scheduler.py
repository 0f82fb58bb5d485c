"""The daemon's clock: one APScheduler job per mailbox, never two runs of one at once."""

from __future__ import annotations

from datetime import datetime

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from syncd.app import App
from syncd.liveness import Liveness
from syncd.notify import Notifier
from syncd.pipeline import PassReport

STOP_GRACE = 0.5
"""Seconds a stopping daemon gives passes in a mail-source call to end by themselves before leaving them."""

log = structlog.get_logger("syncd.scheduler")


def run_until_stopped(app: App, *, liveness: Liveness | None = None, notifier: Notifier | None = None) -> None:
    """Poll every mailbox at its interval until ``app.stopping`` is set, then let the messages in flight finish.

    Each mailbox has its own worker thread, so a slow one never delays the others;
    ``max_instances=1`` and ``coalesce`` keep a slow mailbox from piling up runs.
    Under systemd it reports READY, STATUS and STOPPING, and feeds the watchdog only while
    no running pass is stalled (see ``syncd.liveness``), so a hung poll gets syncd restarted.
    For that, ``app`` must read its mail through ``liveness.watch(...)`` sources.
    """
    liveness = liveness or Liveness()
    notifier = notifier or Notifier()

    def poll(name: str) -> PassReport:
        liveness.begin(name)
        try:
            report = app.safe_pass(name)
        finally:
            liveness.end(name)
        notifier.status(_status(report))
        return report

    mailboxes = app.settings.mailboxes
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=len(mailboxes))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    for mailbox in mailboxes:
        scheduler.add_job(
            poll, IntervalTrigger(seconds=mailbox.poll_interval), args=[mailbox.name],
            id=mailbox.name, name=f"poll {mailbox.name}", next_run_time=datetime.now().astimezone(),
        )
    scheduler.start()
    log.info("started", mailboxes=[m.name for m in mailboxes])
    notifier.ready(f"polling {len(mailboxes)} mailbox(es)")
    _watch(app, liveness, notifier)
    log.info("stopping", detail="finishing the messages in flight")
    notifier.stopping("finishing the messages in flight")
    scheduler.shutdown(wait=False)
    # A pass waiting on its mail server has nothing half-done: leave it rather than wait out a
    # hung server's timeout. The caller exits the process; the next start reads that mail again.
    left = liveness.settle(grace=STOP_GRACE) or []
    if left:
        log.info("left_reading", mailboxes=left, detail="their mail is read again at the next start; nothing was half-sent")
    log.info("stopped")


def _watch(app: App, liveness: Liveness, notifier: Notifier) -> None:
    """Until stopped: feed the watchdog at a third of its interval while every pass makes progress."""
    limit = notifier.watchdog_interval
    if limit is None:
        app.stopping.wait()
        return
    was_stalled: list[str] = []
    while not app.stopping.wait(limit / 3):
        stalled = liveness.stalled(limit)
        if stalled and stalled != was_stalled:
            log.error("pass_stalled", mailboxes=stalled, seconds=limit,
                      action="not feeding systemd's watchdog, so the service is restarted")
            notifier.status(f"stalled: {', '.join(stalled)} made no progress for {limit:g} s")
        was_stalled = stalled
        if not stalled:
            notifier.watchdog()


def _status(report: PassReport) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.states.items())) or "nothing new"
    outcome = f"failed: {report.errors[0]}" if report.errors else counts
    return f"{report.mailbox}: last pass {outcome}"
