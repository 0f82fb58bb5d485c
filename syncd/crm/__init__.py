"""The CRM boundary: what syncd needs from Zoho CRM, as a Protocol and value types.

``syncd.crm.zoho`` implements it over HTTP; ``syncd.crm.payload`` builds the
Associate Email JSON from an ``Email``. Implementations raise only
``syncd.errors.CrmError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Record:
    """A CRM record that carries an email address (a Lead, a Contact, ...)."""

    module: str
    id: str
    name: str = ""
    email: str = ""


@dataclass(frozen=True, slots=True)
class Upload:
    """A file to put in Zoho's file store."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Associated:
    """Outcome of associate_email: Zoho's own message id, or ``duplicate`` when Zoho already had it."""

    zoho_message_id: str | None
    duplicate: bool = False


class Crm(Protocol):
    """A connected CRM. ``close`` releases the connection pool."""

    calls: Mapping[str, int]
    """API calls made so far, by endpoint name (``search``, ``files``, ``associate_email``, ``token``)."""

    def search_by_email(self, module: str, address: str) -> list[Record]:
        """Records of ``module`` whose email equals ``address`` (case-insensitive, exact)."""
        ...

    def upload_files(self, files: Sequence[Upload], *, inline: bool = False) -> list[str]:
        """Upload to ZFS (10 files a request); the file ids, in the order given. Ids are single-use."""
        ...

    def associate_email(self, module: str, record_id: str, email: Mapping[str, Any]) -> Associated:
        """POST one ``Emails[]`` entry to the record's associate_email action."""
        ...

    def check(self) -> str:
        """Obtain a token and make one cheap read; a one-line description of what answered."""
        ...

    def close(self) -> None: ...
