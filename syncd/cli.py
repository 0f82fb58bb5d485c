"""The ``syncd`` command: run, once, check, ledger, sandbox.

Exit codes: 0 success; 1 a pass left messages unfinished or a connection failed;
2 the configuration is unusable (every problem is listed, each with its fix).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from functools import wraps
from pathlib import Path

import click
import structlog

from syncd import __version__, config, log, metrics, progress
from syncd.errors import ConfigError, LedgerError, SyncdError
from syncd.ledger import State
from syncd.settings import Settings

EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2

config_option = click.option(
    "-c", "--config", "config_file", metavar="FILE", envvar=None,
    help="Configuration file [default: $SYNCD_CONFIG, then /etc/syncd/syncd.toml; "
         "when neither exists, the built-in demo].",
)


@contextlib.contextmanager
def _settings(config_file: str | None, *, crm: bool = True, only: Collection[str] = (),
              secrets: bool = True) -> Iterator[Settings]:
    """Load the configuration, or use the demo's when none exists at the default places.

    The demo's sandbox CRM is started only for commands that talk to a CRM (``crm``);
    ``only`` loads just those mailboxes.
    """
    path, explicit = config.locate(config_file)
    if not explicit and not path.exists():
        from syncd import demo

        if not crm:
            yield demo.settings()
            return
        click.echo(f"No configuration at {path} (and $SYNCD_CONFIG unset): running the built-in demo, "
                   "a sample mailbox into a local sandbox CRM. See README.md to configure your own.", err=True)
        settings, server = demo.start()
        try:
            yield settings
        finally:
            server.stop()
        return
    try:
        settings = config.load(path, only=only, secrets=secrets)
    except ConfigError as exc:
        click.echo(f"syncd: configuration problems ({len(exc.problems)}):", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(EXIT_CONFIG)
    yield settings


def _fail_clearly(fn: Callable) -> Callable:
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SyncdError as exc:
            click.echo(f"syncd: {exc}", err=True)
            sys.exit(EXIT_INCOMPLETE)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncd")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
              show_default=True, help="Least severe log events to print.")
@click.option("--log-format", default="auto", type=click.Choice(["auto", "json", "console"]), show_default=True,
              help="auto: console on a terminal, JSON lines otherwise.")
def main(log_level: str, log_format: str) -> None:
    """IMAP mailboxes into Zoho CRM's email history: every message once, on the right records."""
    import logging

    log.configure(level=getattr(logging, log_level.upper()),
                  json=None if log_format == "auto" else log_format == "json")


def _stop_on_signals(stopping: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the message in flight, then exit. Second: exit at once."""

    def handler(signum: int, frame: object) -> None:
        if stopping.is_set():
            os._exit(128 + signum)
        stopping.set()
        structlog.get_logger("syncd.cli").warning(
            "shutdown_requested", signal=signal.Signals(signum).name,
            detail="finishing the message in flight; a second signal exits at once")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@main.command()
@config_option
@click.option("--mailbox", "names", multiple=True, metavar="NAME",
              help="Only this mailbox (repeatable); the others' secrets need not be there (syncd@NAME.service).")
@_fail_clearly
def run(config_file: str | None, names: tuple[str, ...]) -> None:
    """Run the daemon: poll every mailbox at its interval until SIGTERM/SIGINT.

    Under systemd (Type=notify) it reports READY and STATUS and feeds the watchdog while polls progress.
    """
    from syncd.app import App
    from syncd.liveness import Liveness
    from syncd.notify import Notifier
    from syncd.scheduler import run_until_stopped
    from syncd.source import open_source

    stopping = threading.Event()
    _stop_on_signals(stopping)
    with _settings(config_file, only=names) as settings:
        liveness = Liveness()
        app = App(settings, stopping=stopping, source_factory=liveness.watch(open_source))
        try:
            metrics.serve(settings.metrics.listen, app.readiness)
            run_until_stopped(app, liveness=liveness, notifier=Notifier())
        finally:
            app.close()
    _exit_now()


def _exit_now() -> None:
    """Exit 0 at once: everything is closed by now, and the interpreter's teardown of syncd's heap
    would add 0.2-0.3 s to a stop that container runtimes time from SIGTERM (bench/stop_time.py)."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command()
@config_option
@click.option("--mailbox", "names", multiple=True, metavar="NAME", help="Only this mailbox (repeatable).")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Backfill: only mail received on or after this day; older new mail is recorded as skipped. "
                   "Interrupted? Run the same command again: it resumes.")
@click.option("--dry-run", is_flag=True, help="Print per message the records, deal and payload it would get; "
              "write nothing to the CRM or the ledger (reads still happen).")
@_fail_clearly
def once(config_file: str | None, since: datetime | None, names: tuple[str, ...], dry_run: bool) -> None:
    """One pass over every (or the named) mailbox; exit 0 when every message reached a final state."""
    from syncd.app import App

    stopping = threading.Event()
    _stop_on_signals(stopping)
    with _settings(config_file) as settings:
        unknown = [n for n in names if n not in {m.name for m in settings.mailboxes}]
        if unknown:
            known = ", ".join(m.name for m in settings.mailboxes)
            click.echo(f"syncd: no mailbox named {', '.join(unknown)} (configured: {known})", err=True)
            sys.exit(EXIT_CONFIG)
        dry = None
        if dry_run:
            from syncd.dryrun import DryRun

            dry = DryRun(settings)
        app = App(dry.settings if dry else settings, stopping=stopping, crm=dry.crm if dry else None)
        try:
            with progress.shown():
                reports = app.once(list(names) or None, since=since.date() if since else None)
            calls = dict(app.crm.calls)
        finally:
            app.close()
            if dry:
                dry.close()
    from syncd.report import print_pass_summary

    print_pass_summary(reports, calls, ledger_path=settings.ledger.path, demo=settings.demo)
    if not all(r.complete for r in reports):
        sys.exit(EXIT_INCOMPLETE)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
def status(config_file: str | None, as_json: bool) -> None:
    """Per mailbox: last poll, lag, messages per state, last error and what to do; exit 1 when one needs attention."""
    import json

    from syncd.status import collect, print_table

    with _settings(config_file, crm=False, secrets=False) as settings:
        led = _open_ledger(settings)
        try:
            statuses = collect(settings.mailboxes, led.polls(), led.counts())
        finally:
            led.close()
    if as_json:
        click.echo(json.dumps({"mailboxes": [s.as_json() for s in statuses]}, indent=2))
    else:
        print_table(statuses)
    if any(s.state != "ok" for s in statuses):
        sys.exit(EXIT_INCOMPLETE)


@main.command()
@config_option
def check(config_file: str | None) -> None:
    """Validate the configuration and try every connection (IMAP login, CRM token and read)."""
    from syncd.report import check_connections

    with _settings(config_file) as settings:
        ok = check_connections(settings)
    sys.exit(0 if ok else EXIT_INCOMPLETE)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8800, show_default=True, type=int)
@click.option("--seed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file: {module: [record, ...]} to load into the sandbox.")
def sandbox(host: str, port: int, seed: Path | None) -> None:
    """Serve the local Zoho CRM test server (token, search, files, associate_email, ...)."""
    import json

    from syncd.sandbox import serve

    serve(host, port, json.loads(seed.read_text()) if seed else None)


@main.group()
def ledger() -> None:
    """Inspect the ledger: list, show, retry, forget, verify."""


def _open_ledger(settings: Settings):
    from syncd.ledger.sqlite import SqliteLedger

    try:
        return SqliteLedger(settings.ledger.path)
    except LedgerError as exc:
        click.echo(f"syncd: {exc}", err=True)
        sys.exit(EXIT_INCOMPLETE)


state_option = click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in State]),
                            help="Only messages in this state (repeatable).")
mailbox_option = click.option("--mailbox", default=None, metavar="NAME", help="Only this mailbox.")


@ledger.command("list")
@config_option
@state_option
@mailbox_option
@click.option("--limit", default=50, show_default=True, help="At most this many rows (0: all).")
def ledger_list(config_file: str | None, states: tuple[str, ...], mailbox: str | None, limit: int) -> None:
    """List messages, most recently updated first."""
    from syncd.report import print_messages

    with _settings(config_file, crm=False) as settings:
        led = _open_ledger(settings)
        rows = led.messages(mailbox=mailbox, states=[State(s) for s in states], limit=limit or None)
        led.close()
    print_messages(rows)


@ledger.command("show")
@config_option
@click.argument("message_id")
def ledger_show(config_file: str | None, message_id: str) -> None:
    """Everything the ledger knows about one Message-ID: where it was seen, where it went, and why."""
    from syncd.report import print_message

    with _settings(config_file, crm=False) as settings:
        led = _open_ledger(settings)
        mid = message_id.strip().strip("<>")
        found = print_message(led.messages(message_id=mid), led.deliveries(mid), led.deal_history(mid))
        led.close()
    if not found:
        click.echo(f"syncd: {mid} is not in the ledger", err=True)
        sys.exit(EXIT_INCOMPLETE)


@ledger.command("retry")
@config_option
@click.argument("message_id", required=False)
@state_option
@mailbox_option
def ledger_retry(config_file: str | None, message_id: str | None, states: tuple[str, ...], mailbox: str | None) -> None:
    """Queue messages for the next pass (default: every quarantined, unmatched, skipped or retrying one)."""
    with _settings(config_file, crm=False) as settings:
        led = _open_ledger(settings)
        n = led.retry(mailbox=mailbox, states=[State(s) for s in states],
                      message_id=message_id.strip().strip("<>") if message_id else None)
        led.close()
    click.echo(f"{n} message(s) queued for the next pass")


@ledger.command("verify")
@config_option
@mailbox_option
@click.option("--repair", is_flag=True, help="Queue every message found missing for the next pass.")
def ledger_verify(config_file: str | None, mailbox: str | None, repair: bool) -> None:
    """Compare each folder's UIDs with the ledger: report (and with --repair queue) every message never processed.

    Exit 1 when a folder cannot be checked, or when gaps are found without --repair.
    """
    from syncd.ledger.verify import describe, verify_mailbox

    with _settings(config_file, crm=False) as settings:
        chosen = [m for m in settings.mailboxes if mailbox in (None, m.name)]
        if not chosen:
            click.echo(f"syncd: no mailbox named {mailbox}", err=True)
            sys.exit(EXIT_CONFIG)
        led = _open_ledger(settings)
        try:
            checks = [c for m in chosen for c in verify_mailbox(m, led, repair=repair)]
        finally:
            led.close()
    for check in checks:
        click.echo(describe(check, repaired=repair))
    gaps = sum(len(c.missing) for c in checks)
    click.echo(f"{gaps} message(s) never processed" + (", queued for the next pass" if repair and gaps else ""))
    if any(c.error for c in checks) or (gaps and not repair):
        sys.exit(EXIT_INCOMPLETE)


@ledger.command("forget")
@config_option
@click.argument("message_id")
@click.confirmation_option(prompt="Forget that this message was sent? It will be associated again on the next pass")
def ledger_forget(config_file: str | None, message_id: str) -> None:
    """Forget a message's deliveries so the next pass sends it again (after deleting it in Zoho)."""
    with _settings(config_file, crm=False) as settings:
        led = _open_ledger(settings)
        n = led.forget(message_id.strip().strip("<>"))
        led.close()
    click.echo(f"{n} message row(s) queued again")


link_selection = [
    click.argument("message_ids", nargs=-1, metavar="[MESSAGE_ID]..."),
    click.option("--mailbox", default=None, metavar="NAME", help="Every email of this mailbox (with the other filters)."),
    click.option("--contact", default=None, metavar="ID", help="Every email on this Contact (with the other filters)."),
]


def _link_options(fn: Callable) -> Callable:
    for decorate in reversed(link_selection):
        fn = decorate(fn)
    return config_option(fn)


@main.command()
@_link_options
@click.option("--deal", "deal_id", required=True, metavar="DEAL_ID", help="The Deal to link the emails to.")
@_fail_clearly
def link(config_file: str | None, message_ids: tuple[str, ...], mailbox: str | None, contact: str | None,
         deal_id: str) -> None:
    """Link emails already in Zoho to a Deal (replacing any other), chosen by Message-ID or from the ledger."""
    from syncd.linking import command

    with _settings(config_file) as settings:
        code = command(settings, "link", message_ids=message_ids, mailbox=mailbox, contact=contact, deal_id=deal_id)
    sys.exit(code)


@main.command()
@_link_options
@click.option("--deal", "deal_id", default=None, metavar="DEAL_ID", help="Every email now linked to this Deal.")
@_fail_clearly
def unlink(config_file: str | None, message_ids: tuple[str, ...], mailbox: str | None, contact: str | None,
           deal_id: str | None) -> None:
    """Remove the Deal link of emails already in Zoho (they stay on their Contact)."""
    from syncd.linking import command

    with _settings(config_file) as settings:
        code = command(settings, "unlink", message_ids=message_ids, mailbox=mailbox, contact=contact, deal_id=deal_id)
    sys.exit(code)
