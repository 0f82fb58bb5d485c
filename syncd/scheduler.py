"""The daemon's clock: one APScheduler job per mailbox, never two runs of one at once."""

from __future__ import annotations

from datetime import datetime

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from syncd.app import App

log = structlog.get_logger("syncd.scheduler")


def run_until_stopped(app: App) -> None:
    """Poll every mailbox at its interval until ``app.stopping`` is set, then let passes in flight finish.

    Each mailbox has its own worker thread, so a slow one never delays the others;
    ``max_instances=1`` and ``coalesce`` keep a slow mailbox from piling up runs.
    """
    mailboxes = app.settings.mailboxes
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=len(mailboxes))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    for mailbox in mailboxes:
        scheduler.add_job(
            app.safe_pass, IntervalTrigger(seconds=mailbox.poll_interval), args=[mailbox.name],
            id=mailbox.name, name=f"poll {mailbox.name}", next_run_time=datetime.now().astimezone(),
        )
    scheduler.start()
    log.info("started", mailboxes=[m.name for m in mailboxes])
    app.stopping.wait()
    log.info("stopping", detail="finishing the messages in flight")
    scheduler.shutdown(wait=True)
    log.info("stopped")
