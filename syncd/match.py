"""Match: which addresses of a message are counterparts, and which CRM records they belong to."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

from syncd.crm import Crm, Record
from syncd.email import Address, Email


def is_sent(email: Email, *, sent_folder: bool, own: Iterable[str]) -> bool:
    """Sent when it sits in a sent folder or its From is one of the mailbox's own addresses."""
    own_keys = {a.casefold() for a in own}
    return sent_folder or (email.sender is not None and email.sender.key in own_keys)


def counterparts(email: Email, *, sent: bool, own: Iterable[str]) -> list[Address]:
    """The people on the other side: the sender of received mail, the To and Cc of sent mail.

    The mailbox's own addresses never count; each address appears once, in header order.
    """
    own_keys = {a.casefold() for a in own}
    candidates = email.to + email.cc if sent else ((email.sender,) if email.sender else ())
    seen: set[str] = set()
    result = []
    for addr in candidates:
        if addr.key in own_keys or addr.key in seen:
            continue
        seen.add(addr.key)
        result.append(addr)
    return result


class Matcher:
    """Finds the records of each address in the configured modules, in priority order.

    Answers are cached for ``ttl`` seconds (negative ones too), so a mailbox full of
    mail from the same people costs one search per address and module, not per message.
    """

    def __init__(self, crm: Crm, modules: Sequence[str], *, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self._crm = crm
        self._modules = tuple(modules)
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, list[Record]]] = {}
        self._lock = threading.Lock()

    def records_for(self, addresses: Iterable[Address]) -> list[Record]:
        """Every record of every address, modules in configured order, each record once."""
        found: dict[tuple[str, str], Record] = {}
        for addr in addresses:
            for module in self._modules:
                for record in self._lookup(module, addr.addr):
                    found.setdefault((record.module, record.id), record)
        return list(found.values())

    def _lookup(self, module: str, address: str) -> list[Record]:
        key = (module, address.casefold())
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit and now - hit[0] < self._ttl:
            return hit[1]
        records = self._crm.search_by_email(module, address)
        with self._lock:
            self._cache[key] = (now, records)
        return records
