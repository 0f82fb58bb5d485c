"""`syncd link` / `syncd unlink`: change the Deal of emails already in Zoho (Link/Unlink Deal to Emails API).

The emails are chosen from the ledger — by Message-ID, mailbox, Contact or current deal —
among deliveries to Contacts that Zoho confirmed with its own message id (the API addresses
emails by that id, under the Contact). Calls are grouped per Contact and acting user (the
mailbox's owner, else the token's user: the API requires an owner); each change Zoho
confirms is recorded in the ledger, each refusal reported with Zoho's reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import click

from syncd.crm import Crm, Deal
from syncd.deals import linked_record
from syncd.errors import CrmRejected
from syncd.ledger import Linkable
from syncd.ledger.sqlite import SqliteLedger
from syncd.owner import MailboxOwner, User
from syncd.settings import Settings

MODULE = "Contacts"
"""Only a Contact's emails can be linked to deals (the API's paths are under /Contacts)."""
IDS_PER_CALL = 50
"""Message ids per request: the Kaizen post sets no limit; 50 keeps the unlink URL short."""


@dataclass
class Outcome:
    """What a link or unlink run did: changed deliveries, and refused ones with Zoho's reason."""

    changed: list[Linkable] = field(default_factory=list)
    failed: list[tuple[Linkable, str]] = field(default_factory=list)


def select(ledger: SqliteLedger, *, message_ids: Sequence[str] = (), mailbox: str | None = None,
           contact: str | None = None, deal: str | None = None) -> list[Linkable]:
    """The Contacts' emails the selectors name (all of them must match)."""
    ids = [m.strip().strip("<>") for m in message_ids]
    return ledger.linkable(module=MODULE, message_ids=ids, mailbox=mailbox, record_id=contact, deal_id=deal)


def _groups(rows: Sequence[Linkable], acting: Callable[[str], User]) -> dict[tuple[str, User], list[Linkable]]:
    grouped: dict[tuple[str, User], list[Linkable]] = defaultdict(list)
    for row in rows:
        grouped[(row.key.record_id, acting(row.mailbox))].append(row)
    return grouped


def _run(rows: Sequence[Linkable], acting: Callable[[str], User],
         call: Callable[[str, User, list[str]], dict[str, str]], record: Callable[[Linkable], None]) -> Outcome:
    outcome = Outcome()
    for (contact, user), group in _groups(rows, acting).items():
        for start in range(0, len(group), IDS_PER_CALL):
            chunk = group[start:start + IDS_PER_CALL]
            try:
                failures = call(contact, user, [r.zoho_message_id for r in chunk])
            except CrmRejected as exc:
                failures = {r.zoho_message_id: str(exc) for r in chunk}
            for row in chunk:
                if row.zoho_message_id in failures:
                    outcome.failed.append((row, failures[row.zoho_message_id]))
                else:
                    record(row)
                    outcome.changed.append(row)
    return outcome


def link(crm: Crm, ledger: SqliteLedger, rows: Sequence[Linkable], deal: Deal, deals_module_id: str,
         acting: Callable[[str], User]) -> Outcome:
    """Link every email of ``rows`` to ``deal`` (an email has one deal at a time: this replaces any other)."""
    target = linked_record(deal, deals_module_id)
    return _run(
        rows, acting,
        lambda contact, user, ids: crm.link_deal(contact, ids, target, {"id": user.id, "name": user.name}),
        lambda row: ledger.record_deal(row.key, "link", deal.id, deal.name),
    )


def unlink(crm: Crm, ledger: SqliteLedger, rows: Sequence[Linkable], acting: Callable[[str], User]) -> Outcome:
    """Remove the deal link of every email of ``rows``; the emails stay on their Contact."""
    return _run(
        rows, acting,
        lambda contact, user, ids: crm.unlink_deal(contact, ids, user.id),
        lambda row: ledger.record_deal(row.key, "unlink", None),
    )


def command(settings: Settings, action: str, *, message_ids: Sequence[str], mailbox: str | None,
            contact: str | None, deal_id: str | None) -> int:
    """What ``syncd link`` / ``syncd unlink`` run: select, change, print one line per email; the exit code."""
    from syncd.crm.zoho import ZohoCrm

    if not (message_ids or mailbox or contact or (action == "unlink" and deal_id)):
        click.echo(f"syncd {action}: name the emails: MESSAGE_ID..., --mailbox, --contact"
                   + (" or --deal" if action == "unlink" else ""), err=True)
        return 2
    ledger = SqliteLedger(settings.ledger.path)
    crm = ZohoCrm(settings.crm)
    try:
        rows = select(ledger, message_ids=message_ids, mailbox=mailbox, contact=contact,
                      deal=deal_id if action == "unlink" else None)
        missing = [m for m in message_ids if m.strip().strip("<>") not in {r.key.message_id for r in rows}]
        for m in missing:
            click.echo(f"syncd {action}: {m}: no email delivered to a Contact with Zoho's message id in the ledger "
                       "(only Contacts' emails can have a deal)", err=True)
        if not rows:
            click.echo(f"syncd {action}: no email selected", err=True)
            return 1
        owners = {m.name: MailboxOwner(crm, mailbox=m.name, owner_id=m.owner_id, owner_email=m.owner_email)
                  for m in settings.mailboxes}
        fallback = MailboxOwner(crm, mailbox="(none)")
        acting = lambda name: (owners.get(name) or fallback).acting_user()  # noqa: E731 - one-line lookup
        if action == "link":
            assert deal_id is not None
            outcome = link(crm, ledger, rows, crm.deal(deal_id), crm.module_id("Deals"), acting)
        else:
            outcome = unlink(crm, ledger, rows, acting)
    finally:
        crm.close()
        ledger.close()
    done = f"linked to deal {deal_id}" if action == "link" else "unlinked from its deal"
    for row in outcome.changed:
        click.echo(f"ok    {row.key.message_id} on Contacts/{row.key.record_id}: {done}")
    for row, reason in outcome.failed:
        click.echo(f"FAIL  {row.key.message_id} on Contacts/{row.key.record_id}: {reason}")
    return 1 if outcome.failed or missing else 0
