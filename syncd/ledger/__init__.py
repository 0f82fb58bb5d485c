"""The ledger: syncd's single source of truth for "already sent".

It holds three things: one row per delivery (Message-ID, module, record id) with its
state and Zoho's own message id; one row per message seen in a folder (mailbox,
folder, UIDVALIDITY, UID) with the message's overall state; and each folder's
checkpoint (UIDVALIDITY, last UID). A delivery is claimed (written as ``pending``)
before its CRM write and finished after it, so a crash at any point leaves a
``pending`` row: the next run resends it, and Zoho's DUPLICATE_DATA proves a past send.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class State(StrEnum):
    PENDING = "pending"
    """Claimed: a CRM write is in flight, or its outcome was never recorded."""
    DONE = "done"
    DUPLICATE = "duplicate"
    """The CRM already had it (DUPLICATE_DATA): sent before, by us or someone else."""
    UNMATCHED = "unmatched"
    SKIPPED = "skipped"
    QUARANTINED = "quarantined"
    RETRY = "retry"
    """A transient failure; tried again at ``retry_at``."""


FINAL = frozenset({State.DONE, State.DUPLICATE, State.UNMATCHED, State.SKIPPED, State.QUARANTINED})


@dataclass(frozen=True, slots=True)
class MessageKey:
    """Where a message was seen: a UID is only meaningful with its folder's UIDVALIDITY."""

    mailbox: str
    folder: str
    uidvalidity: int
    uid: int


def placeholder_id(key: MessageKey) -> str:
    """The ledger's name for a message whose own Message-ID is not known (unparsed, or not fetched yet)."""
    return f"uid:{key.folder}/{key.uidvalidity}/{key.uid}"


@dataclass(frozen=True, slots=True)
class DeliveryKey:
    """What "sent once" is about: one Message-ID on one CRM record."""

    message_id: str
    module: str
    record_id: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class MessageRow:
    key: MessageKey
    message_id: str
    state: State
    reason: str
    subject: str
    sender: str
    attempts: int
    retry_at: datetime | None
    updated: datetime


@dataclass(frozen=True, slots=True)
class PollRow:
    """A mailbox's last pass: when it ended, the last one without error, and the last error met."""

    mailbox: str
    last_poll: datetime
    last_success: datetime | None
    last_error: str
    error_kind: str
    """The error's class (``SourceAuthError``, ``CrmOrgError``, ...): what ``syncd status`` advises on."""
    error_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    key: DeliveryKey
    state: State
    zoho_message_id: str | None
    reason: str
    attempts: int
    mailbox: str
    updated: datetime


@dataclass(frozen=True, slots=True)
class DealLink:
    """One change of the deal a delivered email is linked to; ``deal_id`` None means unlinked."""

    key: DeliveryKey
    action: str
    """``predicted`` (at association), ``link`` or ``unlink`` (the commands)."""
    deal_id: str | None
    deal_name: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Linkable:
    """A delivered email Zoho knows by its own message id, with the deal it is linked to now."""

    key: DeliveryKey
    zoho_message_id: str
    mailbox: str
    deal_id: str | None
    deal_name: str


class Claim(StrEnum):
    """What ``claim`` found: go ahead (``NEW``/``RESEND``), or leave it (``FINAL``/``BUSY``)."""

    NEW = "new"
    RESEND = "resend"
    """A past attempt's outcome is unknown: send again (Zoho answers DUPLICATE_DATA if it landed)."""
    FINAL = "final"
    BUSY = "busy"
    """Another worker of this process is delivering it right now."""


class Ledger(Protocol):
    def hold(self, mailbox: str) -> AbstractContextManager[None]:
        """Exclusive right to sync ``mailbox`` for the block; ``MailboxBusy`` if another process has it."""
        ...

    def checkpoint(self, mailbox: str, folder: str) -> Checkpoint | None: ...

    def set_checkpoint(self, mailbox: str, folder: str, checkpoint: Checkpoint) -> None: ...

    def message_states(self, mailbox: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> dict[int, MessageRow]: ...

    def record_message(
        self, key: MessageKey, *, message_id: str, state: State, reason: str = "",
        subject: str = "", sender: str = "", retry_at: datetime | None = None,
    ) -> None: ...

    def claim(self, key: DeliveryKey, *, mailbox: str) -> tuple[Claim, DeliveryRow | None]: ...

    def finish(self, key: DeliveryKey, state: State, *, zoho_message_id: str | None = None, reason: str = "") -> None: ...

    def deliveries(self, message_id: str) -> list[DeliveryRow]: ...

    def messages(self, *, mailbox: str | None = None, states: Iterable[State] = (), message_id: str | None = None,
                 limit: int | None = None) -> list[MessageRow]: ...

    def retry(self, *, mailbox: str | None = None, states: Iterable[State] = (), message_id: str | None = None) -> int: ...

    def forget(self, message_id: str) -> int: ...

    def close(self) -> None: ...
