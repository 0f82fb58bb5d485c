"""Upload and associate: deliver one Email to one CRM record, exactly once.

Order is what makes it safe: claim in the ledger (durable ``pending``), upload the
files (ids are single-use, so every attempt uploads afresh), associate, record the
outcome. A crash anywhere leaves ``pending``; the resend that follows is answered
``DUPLICATE_DATA`` by Zoho if the first attempt had landed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog

from syncd import faultpoints
from syncd.crm import Crm, Record, Upload
from syncd.crm.payload import email_payload
from syncd.deals import DealPredictor
from syncd.email import Attachment, Email
from syncd.errors import CrmOrgError, CrmOutcomeUnknown, CrmRejected, CrmTransientError, ParseError
from syncd.ledger import Claim, DeliveryKey, State
from syncd.ledger.sqlite import SqliteLedger
from syncd.owner import MailboxOwner

log = structlog.get_logger("syncd.associate")

MAX_TOTAL_ATTACHMENTS = 10 * 1024 * 1024
"""Zoho refuses more than 10 MB of files on one associated email (FILE_SIZE_EXCEEDS)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one step for a message or delivery: a ledger state and why."""

    state: State
    reason: str = ""
    retry_at: datetime | None = None


def backoff(attempt: int, *, base: float = 30.0, cap: float = 3600.0) -> datetime:
    """When to try again: exponential in the attempt number, capped, with full jitter."""
    delay = min(cap, base * 2 ** max(0, attempt - 1))
    return datetime.now(UTC) + timedelta(seconds=random.uniform(delay / 2, delay))


def retry_time(exc: CrmTransientError, attempt: int, *, base: float) -> datetime:
    """When to retry after ``exc``: when Zoho said (Retry-After), else ``backoff``."""
    if exc.retry_after:
        return datetime.now(UTC) + timedelta(seconds=exc.retry_after)
    return backoff(attempt, base=base)


def fit_attachments(email: Email) -> tuple[Email, list[Attachment]]:
    """Keep the files that fit Zoho's 10 MB, in order; return the others too, for a note in the body.

    Zoho's 20 MB per file never binds on its own: any file over 10 MB is already left out here.
    """
    kept: list[Attachment] = []
    dropped: list[Attachment] = []
    total = 0
    for att in email.attachments:
        if total + len(att.data) <= MAX_TOTAL_ATTACHMENTS:
            kept.append(att)
            total += len(att.data)
        else:
            dropped.append(att)
    return (replace(email, attachments=tuple(kept)) if dropped else email), dropped


class Deliverer:
    """Delivers emails to records for one mailbox, keeping the ledger in step with the CRM."""

    def __init__(self, crm: Crm, ledger: SqliteLedger, *, mailbox: str, owner: MailboxOwner | None = None,
                 deals: DealPredictor | None = None, retry_base: float = 30.0):
        self._crm = crm
        self.retry_base = retry_base  # seconds before the first retry of a transient fault; then doubling
        self._ledger = ledger
        self._mailbox = mailbox
        self._owner = owner
        self._deals = deals

    def deliver(self, email: Email, record: Record, *, sent: bool) -> Verdict:
        """Associate ``email`` with ``record`` unless the ledger says it already was.

        Raises CrmOrgError (after recording the delivery for retry): no further CRM call can succeed.
        """
        key = DeliveryKey(email.message_id, record.module, record.id)
        claim, row = self._ledger.claim(key, mailbox=self._mailbox)
        if claim is Claim.FINAL:
            assert row is not None
            return Verdict(row.state, row.reason or "already in the ledger")
        if claim is Claim.BUSY:
            return Verdict(State.RETRY, "being delivered by another mailbox", backoff(1, base=5))
        attempts = (row.attempts if row else 0) + 1
        if claim is Claim.RESEND:
            log.info("resend_unknown_outcome", module=record.module, record_id=record.id)
        faultpoints.reach("claimed")
        try:
            linked = self._deals.linked_record(record) if self._deals else None  # before any upload: ids are single-use
            fitted, left_out = fit_attachments(email)
            payload = self._payload(fitted, sent=sent, linked_record=linked, left_out=left_out)
            faultpoints.reach("uploaded")
            result = self._crm.associate_email(record.module, record.id, payload)
        except ParseError as exc:
            self._ledger.finish(key, State.QUARANTINED, reason=f"cannot build the email: {exc}")
            return Verdict(State.QUARANTINED, f"cannot build the email: {exc}")
        except CrmRejected as exc:
            reason = f"{exc.code or 'rejected'}: {exc}"
            self._ledger.finish(key, State.QUARANTINED, reason=reason)
            return Verdict(State.QUARANTINED, reason)
        except CrmOutcomeUnknown as exc:
            # It may have landed: keep the row pending so the next attempt is a RESEND.
            self._ledger.release(key)
            return Verdict(State.RETRY, f"outcome unknown: {exc}", backoff(attempts, base=self.retry_base))
        except CrmTransientError as exc:
            self._ledger.finish(key, State.RETRY, reason=str(exc))
            return Verdict(State.RETRY, str(exc), retry_time(exc, attempts, base=self.retry_base))
        except CrmOrgError as exc:
            if exc.code == "NO_PERMISSION" and self._owner is not None and self._owner.configured:
                exc = self._owner.no_permission(exc)
            self._ledger.finish(key, State.RETRY, reason=f"{exc.code}: {exc}")
            raise exc from None
        except BaseException:
            self._ledger.release(key)
            raise
        faultpoints.reach("associated")
        if result.duplicate:
            self._ledger.finish(key, State.DUPLICATE, reason="Zoho already had it (DUPLICATE_DATA)")
            return Verdict(State.DUPLICATE, "Zoho already had it")
        self._ledger.finish(key, State.DONE, zoho_message_id=result.zoho_message_id)
        if linked:
            self._ledger.record_deal(key, "predicted", linked["id"], linked["name"])
        return Verdict(State.DONE)

    def _payload(self, email: Email, *, sent: bool, linked_record: dict | None, left_out: list[Attachment]) -> dict:
        inline = [a for a in email.attachments if a.inline and email.mail_format == "html"]
        files = [a for a in email.attachments if a not in inline]
        inline_ids = self._upload(inline, inline=True)
        file_ids = self._upload(files, inline=False)
        return email_payload(
            email,
            sent=sent,
            attachments=[(a.filename, fid) for a, fid in zip(files, file_ids)],
            inline_ids={a.content_id: fid for a, fid in zip(inline, inline_ids) if a.content_id},
            owner_id=self._owner.owner_key() if self._owner else None,
            linked_record=linked_record,
            left_out=[(a.filename, len(a.data)) for a in left_out],
        )

    def _upload(self, attachments: list[Attachment], *, inline: bool) -> list[str]:
        if not attachments:
            return []
        return self._crm.upload_files(
            [Upload(a.filename, a.data, a.content_type) for a in attachments], inline=inline
        )
