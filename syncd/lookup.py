"""Address → CRM records, economically: an expiring cache and batched COQL queries.

One poll of many messages from the same people must not cost one search per address and
module: answers (absences too) are kept ``ttl`` seconds, and with ``batch`` the addresses
still unknown go to Zoho in one COQL ``Email in (...)`` query per module and 50 values. An
org where COQL is refused (scope, edition) falls back to the per-address search API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

import structlog

from syncd.addrkey import address_key, query_forms
from syncd.crm import Crm, Record
from syncd.email import Address
from syncd.errors import CrmError, CrmOrgError, CrmRejected
from syncd.settings import MatchSettings

log = structlog.get_logger("syncd.lookup")

_COQL_REFUSALS = frozenset({"OAUTH_SCOPE_MISMATCH", "NO_PERMISSION"})
MAX_ENTRIES = 100_000


class RecordLookup:
    """Shared by every mailbox of a process; thread-safe."""

    def __init__(self, crm: Crm, *, clock: Callable[[], float] = time.monotonic):
        self._crm = crm
        self._clock = clock
        self._cache: dict[tuple[str, str, bool], tuple[float, list[Record]]] = {}
        self._no_coql: set[str] = set()
        self._lock = threading.Lock()

    def records(self, people: Sequence[Address], policy: MatchSettings) -> dict[str, list[Record]]:
        """Each address key's records, in the policy's module order (by id within one module).

        The policy says how: ``cache_ttl``, ``batch_lookups``, ``strip_plus_tags``.
        """
        strip_plus = policy.strip_plus_tags
        forms: dict[str, list[str]] = {}
        for addr in people:
            key = address_key(addr.addr, strip_plus=strip_plus) or addr.key
            forms.setdefault(key, []).extend(query_forms(addr.addr, strip_plus=strip_plus))
        result: dict[str, list[Record]] = {key: [] for key in forms}
        for module in policy.modules:
            stale = {k: v for k, v in forms.items() if not self._fresh((module, k, strip_plus), policy.cache_ttl)}
            if stale:
                self._fetch(module, stale, strip_plus, policy.batch_lookups)
            with self._lock:
                for key in forms:
                    result[key].extend(self._cache[(module, key, strip_plus)][1])
        return result

    def check(self, module: str) -> tuple[bool, str]:
        """Whether record lookups in ``module`` work, and how: one line of ``syncd check``."""
        probe = "syncd-check@example.invalid"
        try:
            self._crm.find_by_emails(module, [probe])
            return True, "record lookups batched (COQL)"
        except (CrmOrgError, CrmRejected) as exc:
            if exc.code == "INVALID_MODULE":
                return False, f"Zoho has no module {module!r}: check match.modules / crm.modules"
            if isinstance(exc, CrmOrgError) and exc.code not in _COQL_REFUSALS:
                return False, str(exc)
            refused = exc
        try:
            self._crm.search_by_email(module, probe)
        except CrmError as exc:
            return False, f"record lookups refused: {exc}"
        return True, (f"COQL refused ({refused.code}): one search per address instead "
                      "(grant ZohoCRM.coql.READ and ZohoCRM.settings.fields.READ to batch)")

    def _fresh(self, entry: tuple[str, str, bool], ttl: float) -> bool:
        with self._lock:
            hit = self._cache.get(entry)
        return hit is not None and self._clock() - hit[0] < ttl

    def _fetch(self, module: str, wanted: dict[str, list[str]], strip_plus: bool, batch: bool) -> None:
        values = list(dict.fromkeys(v for forms in wanted.values() for v in forms))
        now = self._clock()
        found: dict[str, dict[str, Record]] = {key: {} for key in wanted}
        for record in self._query(module, values, batch):
            key = address_key(record.email, strip_plus=strip_plus)
            if key in found:
                found[key].setdefault(record.id, record)
        with self._lock:
            if len(self._cache) > MAX_ENTRIES:
                self._cache.clear()  # a bound on a daemon's memory; costs one round of lookups
            for key, records in found.items():
                ordered = sorted(records.values(), key=lambda r: (len(r.id), r.id))
                self._cache[(module, key, strip_plus)] = (now, ordered)

    def _query(self, module: str, values: list[str], batch: bool) -> Iterable[Record]:
        try:
            if batch and module not in self._no_coql:
                try:
                    return self._crm.find_by_emails(module, values)
                except (CrmOrgError, CrmRejected) as exc:
                    if exc.code == "INVALID_MODULE" or (isinstance(exc, CrmOrgError) and exc.code not in _COQL_REFUSALS):
                        raise
                    log.warning("coql_refused", module=module, code=exc.code, error=str(exc),
                                action="searching one address at a time for this module")
                    with self._lock:
                        self._no_coql.add(module)
            return [r for value in values for r in self._crm.search_by_email(module, value)]
        except CrmRejected as exc:
            if exc.code != "INVALID_MODULE":
                raise
            # a configuration mistake, not this message's: pause the mailbox, keep its mail
            raise CrmOrgError(f"Zoho has no module {module!r}: check match.modules / crm.modules ({exc})",
                              code="INVALID_MODULE") from None

