"""Mail sources: where messages come from (an IMAP server, a local Maildir or mbox).

A source is opened for one mailbox, lists its folders with their role, selects one
folder at a time read-only and hands out raw messages by UID. It never changes a
message or its flags. Implementations translate their library's errors into
``syncd.errors.SourceError`` and subclasses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from syncd.settings import MailboxSettings


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder to sync; ``sent`` marks folders whose mail we sent (To/Cc/Bcc are counterparts)."""

    name: str
    sent: bool = False
    drafts: bool = False
    """The mailbox's Drafts folder (SPECIAL-USE ``\\Drafts``): nothing in it is ever imported."""


@dataclass(frozen=True, slots=True)
class Selected:
    """The state of a folder as selected: its UIDVALIDITY and the number of messages in it."""

    name: str
    uidvalidity: int
    exists: int


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message's bytes with the server's metadata; ``data`` is None when over the size cap."""

    uid: int
    size: int
    internaldate: datetime | None
    data: bytes | None
    flags: tuple[bytes, ...] = ()
    """IMAP flags as the server gave them (``b"\\Draft"``, ...); sources that have none give ()."""
    header: bytes | None = None
    """Over the size cap: the header block alone (when the source can give it), so the ledger names the message."""


class MailSource(Protocol):
    """One mailbox, connected. Use as a context manager; ``close`` is idempotent."""

    def folders(self) -> list[Folder]:
        """The folders to sync: the configured ones, plus sent folders discovered by SPECIAL-USE."""
        ...

    def select(self, folder: str) -> Selected:
        """Select ``folder`` read-only. Raises FolderError when it does not exist."""
        ...

    def uids_after(self, last_uid: int) -> list[int]:
        """UIDs greater than ``last_uid`` in the selected folder, ascending."""
        ...

    def uids_since(self, day: date) -> list[int]:
        """UIDs of the messages received on or after ``day`` (IMAP SEARCH SINCE, by internal date), ascending."""
        ...

    def fetch(self, uids: Sequence[int], *, max_size: int | None = None) -> Iterator[RawMessage]:
        """The messages with these UIDs (those still present), in UID order, without changing flags.

        Messages larger than ``max_size`` come back with ``data=None``.
        """
        ...

    def close(self) -> None: ...

    def __enter__(self) -> MailSource: ...

    def __exit__(self, *exc: object) -> None: ...


def open_source(settings: MailboxSettings) -> MailSource:
    """The source for one mailbox: its local Maildir or mbox when configured, else its IMAP server."""
    # imported here: the implementations import this module's value types
    from syncd.source.imap import ImapSource
    from syncd.source.maildir import MaildirSource, MboxSource

    if settings.maildir is not None:
        return MaildirSource(settings)
    if settings.mbox is not None:
        return MboxSource(settings)
    return ImapSource(settings)
