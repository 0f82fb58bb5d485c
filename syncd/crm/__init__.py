"""The CRM boundary: what syncd needs from Zoho CRM, as a Protocol and value types.

``syncd.crm.zoho`` implements it over HTTP; ``syncd.crm.payload`` builds the
Associate Email JSON from an ``Email``. Implementations raise only
``syncd.errors.CrmError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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
class Deal:
    """A Deals record as deal prediction sees it: its Stage and when it last changed."""

    id: str
    name: str
    stage: str
    modified_time: datetime | None = None


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

    def find_by_emails(self, module: str, addresses: Sequence[str]) -> list[Record]:
        """Records of ``module`` with any email field equal to one of ``addresses`` (batched; COQL)."""
        ...

    def upload_files(self, files: Sequence[Upload], *, inline: bool = False) -> list[str]:
        """Upload to ZFS (10 files a request); the file ids, in the order given. Ids are single-use."""
        ...

    def associate_email(self, module: str, record_id: str, email: Mapping[str, Any]) -> Associated:
        """POST one ``Emails[]`` entry to the record's associate_email action."""
        ...

    def contact_deals(self, contact_id: str) -> list[Deal]:
        """The Deals related to a Contact (its Deals related list), with Stage and Modified_Time."""
        ...

    def deal(self, deal_id: str) -> Deal:
        """One Deals record (its name: the Link Deal API wants it)."""
        ...

    def link_deal(self, contact_id: str, message_ids: Sequence[str], linked_record: Mapping[str, Any],
                  owner: Mapping[str, str]) -> dict[str, str]:
        """Link a Contact's existing emails (Zoho's message ids) to a deal; refused ids → Zoho's reason."""
        ...

    def unlink_deal(self, contact_id: str, message_ids: Sequence[str], owner_id: str) -> dict[str, str]:
        """Remove the deal link of a Contact's existing emails; refused ids → Zoho's reason."""
        ...

    def stage_forecasts(self) -> dict[str, str]:
        """Deals Stage value → its forecast type (``Open``, ``Closed Won``, ``Closed Lost``), from field metadata."""
        ...

    def module_id(self, api_name: str) -> str:
        """The id Zoho gives a module (``linked_record`` needs the Deals module's)."""
        ...

    def users(self, kind: str = "ActiveUsers") -> list[dict[str, Any]]:
        """Zoho users of one ``type`` (``CurrentUser``: the token's own user)."""
        ...

    def check(self) -> str:
        """Obtain a token and make one cheap read; a one-line description of what answered."""
        ...

    def close(self) -> None: ...
