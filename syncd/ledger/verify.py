"""Gap reconciliation (``syncd ledger verify``): every UID behind a folder's checkpoint must be in the ledger.

The checkpoint promises "everything at or below this UID reached a final state or is
queued". A cursor bug that skips messages breaks that promise silently; this check
compares the folder's real UID set (current UIDVALIDITY) with the ledger's message rows
and names every UID never processed. ``repair`` queues those UIDs as ``retry`` due now,
and the next pass fetches them (``due`` picks retries below the checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from syncd.errors import SourceError
from syncd.ledger import MessageKey, State, placeholder_id
from syncd.ledger.sqlite import SqliteLedger
from syncd.settings import MailboxSettings
from syncd.source import MailSource, open_source

REPAIR_REASON = "never processed (found by `syncd ledger verify --repair`)"


@dataclass
class FolderCheck:
    """One folder's verdict: the UIDs at or below its checkpoint that the ledger has never seen."""

    mailbox: str
    folder: str
    uidvalidity: int = 0
    checkpoint: int = 0
    """Last UID covered by the checkpoint under the current UIDVALIDITY (0: nothing covered yet)."""
    checked: int = 0
    """UIDs present in the folder at or below the checkpoint."""
    missing: list[int] = field(default_factory=list)
    error: str = ""


def verify_mailbox(
    mailbox: MailboxSettings,
    ledger: SqliteLedger,
    *,
    repair: bool = False,
    source_factory: Callable[[MailboxSettings], MailSource] = open_source,
) -> list[FolderCheck]:
    """Check every folder of ``mailbox``; with ``repair``, queue each missing UID for the next pass."""
    try:
        with source_factory(mailbox) as source:
            return [_verify_folder(source, mailbox.name, folder.name, ledger, repair) for folder in source.folders()]
    except SourceError as exc:
        return [FolderCheck(mailbox.name, "*", error=str(exc))]


def _verify_folder(source: MailSource, mailbox: str, folder: str, ledger: SqliteLedger, repair: bool) -> FolderCheck:
    check = FolderCheck(mailbox, folder)
    try:
        check.uidvalidity = source.select(folder).uidvalidity
        saved = ledger.checkpoint(mailbox, folder)
        # Under another UIDVALIDITY the next pass rescans the whole folder anyway: nothing is behind it.
        check.checkpoint = saved.last_uid if saved and saved.uidvalidity == check.uidvalidity else 0
        below = [u for u in source.uids_after(0) if u <= check.checkpoint]
    except SourceError as exc:
        check.error = str(exc)
        return check
    check.checked = len(below)
    known = ledger.message_states(mailbox, folder, check.uidvalidity, below)
    check.missing = [u for u in below if u not in known]
    if repair:
        for uid in check.missing:
            key = MessageKey(mailbox, folder, check.uidvalidity, uid)
            ledger.record_message(key, message_id=placeholder_id(key), state=State.RETRY, reason=REPAIR_REASON)
    return check


def known_messages(ledger: SqliteLedger, mailbox: str, folder: str, uidvalidity: int) -> int:
    """Distinct Message-IDs the ledger saw in ``folder`` under ``uidvalidity`` (after a reset: what should still be there)."""
    rows = ledger.messages(mailbox=mailbox)
    return len({r.message_id for r in rows if r.key.folder == folder and r.key.uidvalidity == uidvalidity})


def supersede_waiting(ledger: SqliteLedger, mailbox: str, folder: str, uidvalidity: int) -> int:
    """After a UIDVALIDITY change, rows still waiting for a retry under an older one are settled: the rescan
    handles those messages under their new UIDs (their deliveries, keyed by Message-ID, are kept)."""
    stale = [r for r in ledger.messages(mailbox=mailbox, states=[State.RETRY])
             if r.key.folder == folder and r.key.uidvalidity != uidvalidity]
    for r in stale:
        ledger.record_message(r.key, message_id=r.message_id, state=State.SKIPPED, subject=r.subject, sender=r.sender,
                              reason=f"superseded: the folder's UIDVALIDITY is now {uidvalidity}, the message "
                                     "is handled under its new UID")
    return len(stale)


def uid_ranges(uids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1:3,7"`` (IMAP's own notation for UID sets)."""
    return ",".join(f"{a}:{b}" if a != b else str(a) for a, b in _runs(sorted(uids)))


def _runs(uids: Sequence[int]) -> Iterator[tuple[int, int]]:
    start = prev = None
    for uid in uids:
        if prev is not None and uid == prev + 1:
            prev = uid
            continue
        if start is not None:
            yield start, prev
        start = prev = uid
    if start is not None:
        yield start, prev


def describe(check: FolderCheck, *, repaired: bool) -> str:
    """One line for people: what was checked, and what is missing (and whether it is now queued)."""
    where = f"mailbox {check.mailbox}/{check.folder}"
    if check.error:
        return f"FAIL  {where}: cannot verify: {check.error}"
    head = f"{where} (uidvalidity {check.uidvalidity}): {check.checked} message(s) up to checkpoint uid {check.checkpoint}"
    if not check.missing:
        return f"ok    {head}, none missing"
    action = "queued for the next pass" if repaired else "run `syncd ledger verify --repair` to queue them"
    return f"GAP   {head}, {len(check.missing)} never processed: uids {uid_ranges(check.missing)} ({action})"
