"""The parsed message: syncd's own typed value, independent of mail-parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox address; the domain is lower-cased (and IDNA-decoded), the local part kept."""

    name: str
    addr: str

    @property
    def key(self) -> str:
        """The form addresses are compared in: case-insensitive."""
        return self.addr.casefold()


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file carried by the message; ``content_id`` is set for inline parts referenced as ``cid:``."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None

    @property
    def inline(self) -> bool:
        return self.content_id is not None


@dataclass(frozen=True, slots=True)
class Email:
    """One message as syncd understands it.

    ``message_id`` is canonical (no angle brackets, stripped); when the message had none it
    is a stable fingerprint of the message (``message_id_synthetic``), so the same bytes
    always get the same key.
    """

    message_id: str
    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    subject: str
    content: str
    mail_format: Literal["html", "text"]
    date_time: datetime
    attachments: tuple[Attachment, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    message_id_synthetic: bool = False

    @property
    def participants(self) -> tuple[Address, ...]:
        """Everyone on the message: sender, then To, Cc, Bcc."""
        head = (self.sender,) if self.sender else ()
        return head + self.to + self.cc + self.bcc

    def header(self, name: str) -> str:
        """A header's value ('' when absent), looked up case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return ""
