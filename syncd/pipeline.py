"""One sync pass over one mailbox: folders → new UIDs → messages → verdicts → checkpoint.

Per message the steps are, in order: size cap, parse, drafts, direction, filter, match,
deliver to each record, record the verdict. Unmatched messages of the last weeks come back
when their people get a CRM record (``syncd.retro``). The checkpoint only moves past a
contiguous run of messages in a final state, so nothing behind it is ever skipped.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

import structlog

from syncd import faultpoints, metrics
from syncd.associate import Deliverer, Verdict, retry_time
from syncd.email import Email
from syncd.errors import CrmOrgError, CrmTransientError, FolderError, LedgerError, ParseError, SourceError
from syncd.filter import draft_reason, skip_reason
from syncd.ledger import FINAL, Checkpoint, MessageKey, State, placeholder_id
from syncd.ledger.sqlite import SqliteLedger
from syncd.ledger.verify import known_messages, supersede_waiting
from syncd.match import Matcher, counterparts, is_sent
from syncd.retro import Retro
from syncd.parse import parse_message
from syncd.settings import MailboxSettings
from syncd.source import Folder, MailSource, RawMessage, Selected, open_source

log = structlog.get_logger("syncd.pipeline")

_WORST_FIRST = (State.RETRY, State.QUARANTINED, State.DONE, State.DUPLICATE)
"""How a message's verdict follows from its deliveries': any retry holds the message back."""

VANISHED_SHARE = 0.1
"""After a UIDVALIDITY change, warn when at least this share of the messages the ledger knew is gone."""

MAX_TRANSIENT_IN_A_ROW = 3
"""After this many transient CRM failures in a row, end the pass instead of hammering a sick CRM."""


@dataclass
class PassReport:
    """What one pass did: messages per final verdict, and whether every message reached a final state."""

    mailbox: str
    states: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_kind: str = ""
    """The class of the last error (``FolderError``, ``CrmOrgError``, ...): what ``syncd status`` advises on."""
    details: list[tuple[str, str, State, str]] = field(default_factory=list)
    """(folder, subject, state, reason) per message handled, for the demo's summary."""
    deferred: int = 0
    """Messages left alone because their retry time has not come: not final, so the pass is not complete."""

    @property
    def complete(self) -> bool:
        return not self.errors and not self.deferred and all(s in FINAL for s in self.states)


class MailboxSync:
    """Syncs one mailbox into the CRM; ``run_pass`` is safe to call repeatedly."""

    def __init__(
        self,
        mailbox: MailboxSettings,
        *,
        ledger: SqliteLedger,
        matcher: Matcher,
        deliverer: Deliverer,
        stopping: threading.Event | None = None,
        source_factory: Callable[[MailboxSettings], MailSource] = open_source,
    ):
        self.mailbox = mailbox
        self._ledger = ledger
        self._matcher = matcher
        self._retro = Retro(ledger, matcher, mailbox)
        self._deliverer = deliverer
        self._stopping = stopping or threading.Event()
        self._open = source_factory

    def run_pass(self, since: date | None = None) -> PassReport:
        """One pass; ``since`` makes it a backfill of the mail received on or after that day (see ``_leave_out``)."""
        report = PassReport(self.mailbox.name)
        with structlog.contextvars.bound_contextvars(mailbox=self.mailbox.name):
            with self._ledger.hold(self.mailbox.name), self._open(self.mailbox) as source:
                for folder in source.folders():
                    if self._stopping.is_set():
                        break
                    try:
                        self._sync_folder(source, folder, report, since)
                    except FolderError as exc:
                        log.error("folder_unavailable", folder=folder.name, error=str(exc))
                        report.errors.append(str(exc))
                        report.error_kind = type(exc).__name__
                    except CrmOrgError as exc:
                        log.error("crm_paused", code=exc.code, error=str(exc),
                                  action="CRM work paused until the fix; nothing is lost, every poll tries again")
                        report.errors.append(f"CRM: {exc}")
                        report.error_kind = type(exc).__name__
                        break
        log.info("pass_done", **{str(k): v for k, v in report.states.items()}, complete=report.complete)
        return report

    def _sync_folder(self, source: MailSource, folder: Folder, report: PassReport, since: date | None = None) -> None:
        selected = source.select(folder.name)
        name, uidvalidity = folder.name, selected.uidvalidity
        checkpoint = self._ledger.checkpoint(self.mailbox.name, name)
        last = 0
        if checkpoint and checkpoint.uidvalidity == uidvalidity:
            last = checkpoint.last_uid
        elif checkpoint:
            self._uidvalidity_changed(name, checkpoint.uidvalidity, selected)
        new = source.uids_after(last)
        if since is not None:
            self._leave_out(source, name, uidvalidity, new, since)
        now = datetime.now(UTC)
        due = self._ledger.due(self.mailbox.name, name, uidvalidity, now)
        known = self._ledger.message_states(self.mailbox.name, name, uidvalidity, new)
        waiting = self._retro.due(name, uidvalidity)
        todo = sorted(set(due) | waiting | {u for u in new if not _settled(known.get(u), now)})
        report.deferred += sum(1 for u, row in known.items() if row.state == State.RETRY and u not in todo)
        verdicts = {u: row.state for u, row in known.items()}
        metrics.folder_started(self.mailbox.name, name, len(todo))
        transient_in_a_row = 0
        finished = True
        with structlog.contextvars.bound_contextvars(folder=name):
            for raw in self._matcher.prefetched(source.fetch(todo, max_size=self.mailbox.max_message_size),
                                                self.mailbox):
                key = MessageKey(self.mailbox.name, name, uidvalidity, raw.uid)
                with structlog.contextvars.bound_contextvars(uid=raw.uid):
                    verdict = self._handle(key, folder, raw, report)
                    structlog.contextvars.unbind_contextvars("message_id")
                verdicts[raw.uid] = verdict.state
                transient_in_a_row = transient_in_a_row + 1 if verdict.state == State.RETRY else 0
                if self._stopping.is_set() or transient_in_a_row >= MAX_TRANSIENT_IN_A_ROW:
                    finished = False
                    break
        if finished:
            # Asked for but not returned: expunged since the SEARCH, nothing left to sync.
            verdicts.update((u, State.SKIPPED) for u in todo if u not in verdicts)
        self._retro.settle(name, uidvalidity, {u: verdicts[u] for u in waiting if u in verdicts})
        self._advance(name, uidvalidity, last, new, verdicts)

    def _uidvalidity_changed(self, folder: str, old: int, selected: Selected) -> None:
        """The folder's UIDs mean something else now: rescan it (the ledger's Message-IDs keep it from re-sending),
        and say so loudly when fewer messages are there than the ledger knew (a folder emptied or replaced)."""
        known = known_messages(self._ledger, self.mailbox.name, folder, old)
        superseded = supersede_waiting(self._ledger, self.mailbox.name, folder, selected.uidvalidity)
        log.warning("uidvalidity_changed", folder=folder, old=old, new=selected.uidvalidity, known=known,
                    present=selected.exists, superseded=superseded, action="rescanning; the ledger prevents re-sends")
        gone = known - selected.exists
        if gone > 0 and gone >= known * VANISHED_SHARE:
            log.warning("known_messages_vanished", folder=folder, missing=gone, known=known,
                        hint=f"check the folder on the server; `syncd ledger list --mailbox {self.mailbox.name}` "
                             "shows what was synced before")

    def _leave_out(self, source: MailSource, folder: str, uidvalidity: int, new: list[int], since: date) -> None:
        """Backfill: record the new messages received before ``since`` as skipped, unfetched, so the checkpoint
        moves past them for good (``syncd ledger retry --state skipped`` brings them back)."""
        window = set(source.uids_since(since))
        before = [u for u in new if u not in window]
        if before:
            self._ledger.record_skipped(self.mailbox.name, folder, uidvalidity, before,
                                        reason=f"received before the backfill's --since {since}")
        log.info("backfill_window", folder=folder, since=str(since), left_out=len(before), inside=len(new) - len(before))

    def _handle(self, key: MessageKey, folder: Folder, raw: RawMessage, report: PassReport) -> Verdict:
        email: Email | None = None
        try:
            email, verdict = self._read(folder, raw)
            if verdict is None:
                verdict = self._decide(key, folder, email)
        except CrmOrgError as exc:
            # Due at once: the next poll probes the CRM with this message, so the backlog
            # drains by itself as soon as the operator has fixed the cause.
            self._record(key, email, raw, Verdict(State.RETRY, f"CRM paused: {exc}", datetime.now(UTC)), report)
            raise
        except (LedgerError, SourceError):
            raise
        except Exception as exc:  # unforeseen input or a bug: this message waits for a fix, the folder goes on
            log.exception("message_failed", error=repr(exc))
            verdict = Verdict(State.QUARANTINED, f"internal error: {exc!r}")
        self._record(key, email, raw, verdict, report)
        return verdict

    def _read(self, folder: Folder, raw: RawMessage) -> tuple[Email | None, Verdict | None]:
        """Size cap, parse, drafts: the steps that need no CRM. A verdict here ends the message."""
        draft = draft_reason(raw.flags, drafts_folder=folder.drafts)
        if raw.data is None:
            return self._too_large(raw)
        try:
            email = parse_message(raw.data, internaldate=raw.internaldate)
        except ParseError as exc:
            return None, Verdict(State.SKIPPED, draft) if draft else Verdict(State.QUARANTINED, f"cannot parse: {exc}")
        if draft:
            return email, Verdict(State.SKIPPED, draft)
        structlog.contextvars.bind_contextvars(message_id=email.message_id)
        return email, None

    def _decide(self, key: MessageKey, folder: Folder, email: Email) -> Verdict:
        """Direction, filter, match, deliver to each record: the first step that decides ends it."""
        own, policy = self.mailbox.addresses, self.mailbox.match
        sent = is_sent(email, sent_folder=folder.sent, own=own, policy=policy)
        reason = skip_reason(email, sent=sent, own=own, policy=policy)
        if reason:
            return Verdict(State.SKIPPED, reason)
        try:
            found = self._matcher.match(counterparts(email, sent=sent, own=own, policy=policy), policy)
        except CrmTransientError as exc:
            return Verdict(State.RETRY, f"record lookup failed: {exc}", retry_time(exc, 1, base=self._deliverer.retry_base))
        if not found.records:
            self._retro.note(key, found)
            return Verdict(State.UNMATCHED, found.reason)
        verdicts = [self._deliverer.deliver(email, r, sent=sent) for r in found.records]
        verdict = _combine(verdicts, found.records)
        if verdict.state == State.DONE:
            return replace(verdict, reason=found.reason)
        return replace(verdict, reason=f"{verdict.reason} ({found.reason})")

    def _too_large(self, raw: RawMessage) -> tuple[Email | None, Verdict]:
        """Not fetched, not lost: quarantined under its own Message-ID (from the header alone) until the cap is raised."""
        try:
            email = parse_message(raw.header, internaldate=raw.internaldate) if raw.header else None
        except ParseError:
            email = None
        reason = (f"too large: {raw.size} bytes > max_message_size {self.mailbox.max_message_size}, not fetched; "
                  "raise max_message_size, then `syncd ledger retry` it")
        return email, Verdict(State.QUARANTINED, reason)

    def _record(self, key: MessageKey, email: Email | None, raw: RawMessage, verdict: Verdict, report: PassReport) -> None:
        message_id = email.message_id if email else placeholder_id(key)
        subject = email.subject if email else ""
        sender = email.sender.addr if email and email.sender else ""
        self._ledger.record_message(key, message_id=message_id, state=verdict.state, reason=verdict.reason,
                                    subject=subject, sender=sender, retry_at=verdict.retry_at)
        report.states[verdict.state] += 1
        metrics.message_recorded(key.mailbox, key.folder, verdict.state)
        report.details.append((key.folder, subject, verdict.state, verdict.reason))
        level = "warning" if verdict.state in (State.QUARANTINED, State.RETRY) else "info"
        getattr(log, level)("message", state=str(verdict.state), reason=verdict.reason, size=raw.size)
        faultpoints.reach("recorded")

    def _advance(self, folder: str, uidvalidity: int, last: int, new: list[int], verdicts: dict[int, State]) -> None:
        """Move the checkpoint past the leading run of final messages."""
        top = last
        for uid in new:
            state = verdicts.get(uid)
            if state is None or state not in FINAL:
                break
            top = uid
        self._ledger.set_checkpoint(self.mailbox.name, folder, Checkpoint(uidvalidity, top))


def _settled(row, now: datetime) -> bool:
    """A message needs no work now: final, or waiting for its retry time."""
    if row is None:
        return False
    if row.state in FINAL:
        return True
    return row.state == State.RETRY and row.retry_at is not None and row.retry_at > now


def _combine(verdicts: list[Verdict], records) -> Verdict:
    for state in _WORST_FIRST:
        hits = [(v, r) for v, r in zip(verdicts, records) if v.state == state]
        if hits:
            reasons = "; ".join(f"{r.module}/{r.id}: {v.reason or v.state}" for v, r in hits)
            retry_at = min((v.retry_at for v, _ in hits if v.retry_at), default=None)
            return Verdict(state, reasons, retry_at)
    return Verdict(State.DONE)
