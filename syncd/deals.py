"""Deal prediction: the Deal an email associated with a Contact is linked to (Zoho's Kaizen rules).

For a Contact: exactly one open deal → that deal; several open deals → the most recently
modified one (an open deal is never closed-lost); no open deal → no link. "Open" is the
Stage's forecast type (``Open`` / ``Closed Won`` / ``Closed Lost``) from the Deals field
metadata, never the stage's name: orgs rename stages ("Closed-Lost to Competition"). A stage
the metadata does not know (added since it was read) triggers one re-read; if it is still
unknown the deal counts as not open — no link is better than a wrong one, and `syncd link`
fixes either.

How the link is made: ``linked_record`` inside the associate_email call, not the separate
Link Deal to Emails API. One request instead of two, so an email never exists in Zoho
unlinked because a second call failed or the process died in between; the link is part of
the same exactly-once delivery the ledger tracks; and it needs neither Zoho's message id
nor an ``owner`` (which the Link API makes mandatory). The Link/Unlink API is what
``syncd link`` / ``syncd unlink`` use to change links afterwards (syncd/linking.py).

Lookups are cached (a Contact's deals for ``ttl`` seconds, the Stage metadata until a stage it does
not know shows up, the Deals module id for the process), so a pass over many mails from one person costs one deals read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from syncd.crm import Crm, Deal, Record
from syncd.errors import CrmRejected

log = structlog.get_logger("syncd.deals")

OPEN = "Open"
_NEVER = datetime.min.replace(tzinfo=UTC)


def predict(deals: Sequence[Deal], forecasts: dict[str, str]) -> Deal | None:
    """The deal to link per the Kaizen rules, given each Stage's forecast type; None for no link."""
    open_deals = [d for d in deals if forecasts.get(d.stage, "").casefold() == OPEN.casefold()]
    if not open_deals:
        return None
    # Ties on Modified_Time (or none given) go to the highest id: Zoho ids grow with creation.
    return max(open_deals, key=lambda d: (_aware(d.modified_time), int(d.id) if d.id.isdigit() else 0, d.id))


def _aware(moment: datetime | None) -> datetime:
    if moment is None:
        return _NEVER
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def linked_record(deal: Deal, deals_module_id: str) -> dict[str, Any]:
    """The ``linked_record`` object both associate_email and the Link Deal API take."""
    return {"module": {"api_name": "Deals", "id": deals_module_id}, "id": deal.id, "name": deal.name}


class DealPredictor:
    """Predicts deals for one CRM connection; thread-safe, shared by every mailbox."""

    def __init__(self, crm: Crm, *, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self._crm = crm
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._deals: dict[str, tuple[float, list[Deal]]] = {}
        self._forecasts: tuple[float, dict[str, str]] | None = None
        self._module_id: str | None = None

    def linked_record(self, record: Record) -> dict[str, Any] | None:
        """The ``linked_record`` for an email going to ``record``: its predicted deal, or None.

        Zoho refusing the deal lookup (no access to Deals, say) costs the link, never the email;
        transient faults propagate, so the delivery is retried with its link later.
        """
        if record.module != "Contacts":
            return None
        try:
            deal = self.deal_for(record.id)
            return None if deal is None else linked_record(deal, self.deals_module_id())
        except CrmRejected as exc:
            log.warning("deal_prediction_failed", contact_id=record.id, error=str(exc))
            return None

    def deal_for(self, contact_id: str) -> Deal | None:
        deals = self._contact_deals(contact_id)
        return predict(deals, self._forecasts_for(deals))

    def deals_module_id(self) -> str:
        with self._lock:
            known = self._module_id
        if known is None:
            known = self._crm.module_id("Deals")
            with self._lock:
                self._module_id = known
        return known

    def _contact_deals(self, contact_id: str) -> list[Deal]:
        now = self._clock()
        with self._lock:
            hit = self._deals.get(contact_id)
        if hit and now - hit[0] < self._ttl:
            return hit[1]
        deals = self._crm.contact_deals(contact_id)
        with self._lock:
            self._deals[contact_id] = (now, deals)
        return deals

    def _forecasts_for(self, deals: Sequence[Deal]) -> dict[str, str]:
        """The Stage metadata, read again (at most once per ``ttl``) when a deal carries a stage it does not list."""
        now = self._clock()
        with self._lock:
            cached = self._forecasts
        stale = cached is None or (any(d.stage not in cached[1] for d in deals) and now - cached[0] >= self._ttl)
        if not stale:
            return cached[1]
        forecasts = self._crm.stage_forecasts()
        with self._lock:
            self._forecasts = (now, forecasts)
        return forecasts
