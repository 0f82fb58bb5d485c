"""What the commands print for people: pass summaries, connection checks, ledger rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from syncd.errors import SyncdError
from syncd.ledger import DealLink, DeliveryRow, MessageRow
from syncd.pipeline import PassReport
from syncd.settings import Settings
from syncd.source import open_source


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_pass_summary(reports: Sequence[PassReport], calls: Mapping[str, int], *, ledger_path: Path,
                       demo: bool) -> None:
    """A line per message handled (on a pass of a few), then totals per mailbox and the CRM calls made."""
    handled = sum(len(r.details) for r in reports)
    if handled <= 50:
        for r in reports:
            for folder, subject, state, reason in r.details:
                click.echo(f"{r.mailbox}/{folder}  {state:<11}  {_cut(subject or '(no subject)', 50):<50}  {_cut(reason, 70)}")
    for r in reports:
        states = ", ".join([f"{n} {s}" for s, n in sorted(r.states.items())]
                           + ([f"{r.deferred} waiting to be retried"] if r.deferred else [])) or (
            "not synced" if r.errors else "nothing new")
        click.echo(f"mailbox {r.mailbox}: {states}")
        for error in r.errors:
            click.echo(f"  error: {error}")
    total = sum(calls.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
    click.echo(f"CRM calls: {total}" + (f" ({detail})" if detail else ""))
    if demo:
        click.echo(f"Ledger: {ledger_path} — run again and nothing is sent twice; "
                   "`syncd ledger list` shows every message and why.")


def check_connections(settings: Settings) -> bool:
    """Try every mailbox (login, each folder), the CRM (token, one read) and mailbox owners; print one line each."""
    from syncd.crm.zoho import ZohoCrm
    from syncd.lookup import RecordLookup
    from syncd.owner import MailboxOwner

    ok = True

    def line(good: bool, what: str, detail: str) -> None:
        nonlocal ok
        ok &= good
        click.echo(f"{'ok  ' if good else 'FAIL'}  {what}: {detail}")

    click.echo(f"config: {settings.source_file} ({len(settings.mailboxes)} mailbox(es))")
    for mailbox in settings.mailboxes:
        try:
            with open_source(mailbox) as source:
                folders = source.folders()
                for folder in folders:
                    selected = source.select(folder.name)
                    kind = "sent" if folder.sent else "received"
                    line(True, f"mailbox {mailbox.name}", f"{folder.name} ({kind}, {selected.exists} messages)")
        except SyncdError as exc:
            line(False, f"mailbox {mailbox.name}", str(exc))
    crm = ZohoCrm(settings.crm)
    try:
        line(True, "crm", crm.check())
        for mailbox in (m for m in settings.mailboxes if m.owner_id or m.owner_email):
            owner = MailboxOwner(crm, mailbox=mailbox.name, owner_id=mailbox.owner_id, owner_email=mailbox.owner_email)
            good, detail = owner.check()
            line(good, f"owner of mailbox {mailbox.name}", detail)
        lookup = RecordLookup(crm)
        for module in dict.fromkeys(m for mailbox in settings.mailboxes for m in mailbox.match.modules):
            good, detail = lookup.check(module)
            line(good, f"crm module {module}", detail)
    except SyncdError as exc:
        line(False, "crm", str(exc))
    finally:
        crm.close()
    return ok


def print_messages(rows: Sequence[MessageRow]) -> None:
    if not rows:
        click.echo("no messages")
        return
    for r in rows:
        where = f"{r.key.mailbox}/{r.key.folder}:{r.key.uid}"
        click.echo(f"{r.updated:%Y-%m-%d %H:%M}  {r.state:<11}  {where:<24}  {_cut(r.message_id, 40):<40}  "
                   f"{_cut(r.subject, 40)}  {_cut(r.reason, 60)}")
    counts = Counter(r.state for r in rows)
    click.echo(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def print_message(messages: Sequence[MessageRow], deliveries: Sequence[DeliveryRow],
                  deals: Sequence[DealLink] = ()) -> bool:
    """The whole story of one Message-ID; False when the ledger has never seen it."""
    if not messages and not deliveries:
        return False
    first = messages[0] if messages else None
    if first:
        click.echo(f"message-id: {first.message_id}\nsubject:    {first.subject}\nfrom:       {first.sender}")
    for m in messages:
        retry = f", next try {m.retry_at:%Y-%m-%d %H:%M:%S}" if m.retry_at else ""
        click.echo(f"seen in {m.key.mailbox}/{m.key.folder} uid {m.key.uid} (uidvalidity {m.key.uidvalidity}): "
                   f"{m.state}{retry} after {m.attempts} attempt(s) — {m.reason or 'no reason recorded'}")
    for d in deliveries:
        zoho = f", Zoho message id {d.zoho_message_id}" if d.zoho_message_id else ""
        click.echo(f"  → {d.key.module}/{d.key.record_id}: {d.state}{zoho} ({d.attempts} attempt(s)) {d.reason}")
        for change in (c for c in deals if c.key == d.key):
            target = f"deal {change.deal_id} ({change.deal_name})" if change.deal_id else "no deal"
            click.echo(f"      {target}: {change.action} at {change.at:%Y-%m-%d %H:%M:%S}")
    if messages and not deliveries:
        click.echo("  → no CRM record received it (see the reason above)")
    return True
