"""Match: which addresses of a message are counterparts, and which CRM records they go to.

Addresses are compared by their *key*: case-folded, the domain in Unicode (IDNA-decoded), and
with ``strip_plus_tags`` the ``+tag`` of the local part removed. The records of each key come
from ``syncd.lookup`` (cached, batched); the mailbox's ``multiple`` policy then picks among them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

import structlog

from syncd.addrkey import address_key, in_domains
from syncd.crm import Record
from syncd.email import Address, Email
from syncd.lookup import RecordLookup
from syncd.parse.addresses import parse_addresses
from syncd.errors import CrmTransientError
from syncd.settings import MailboxSettings, MatchSettings
from syncd.source import RawMessage

log = structlog.get_logger("syncd.match")

_HEADERS = ("From", "Reply-To", "To", "Cc", "Bcc")


def is_sent(email: Email, *, sent_folder: bool, own: Iterable[str], policy: MatchSettings = MatchSettings()) -> bool:
    """Sent when it sits in a sent folder or its From is one of the mailbox's own addresses (tags stripped if asked)."""
    strip = policy.strip_plus_tags
    own_keys = {address_key(a, strip_plus=strip) for a in own}
    return sent_folder or (email.sender is not None and address_key(email.sender.addr, strip_plus=strip) in own_keys)


def candidates(email: Email, *, sent: bool, policy: MatchSettings) -> list[Address]:
    """The other side's addresses, each once in header order: From (+ Reply-To) of received mail, To, Cc (+ Bcc) of sent."""
    if sent:
        found = email.to + email.cc + (email.bcc if policy.bcc else ())
    else:
        found = ((email.sender,) if email.sender else ()) + (email.reply_to if policy.reply_to else ())
    return _unique(found, policy)


def is_blocked(addr: Address, policy: MatchSettings) -> bool:
    """Whether ``addr`` is in ``block_addresses`` or in (a subdomain of) one of ``block_domains``."""
    key = address_key(addr.addr, strip_plus=policy.strip_plus_tags) or addr.key
    blocked = {address_key(a, strip_plus=policy.strip_plus_tags) for a in policy.block_addresses}
    return key in blocked or in_domains(key, policy.block_domains)


def counterparts(email: Email, *, sent: bool, own: Iterable[str], policy: MatchSettings = MatchSettings()) -> list[Address]:
    """The people on the other side whose records get the email: candidates that are neither own nor blocked."""
    own_keys = {address_key(a, strip_plus=policy.strip_plus_tags) for a in own}
    return [a for a in candidates(email, sent=sent, policy=policy)
            if _key(a, policy) not in own_keys and not is_blocked(a, policy)]


def header_addresses(data: bytes) -> list[Address]:
    """Every address in a raw message's address headers, from the header block only (cheap: no body parse)."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(data)
    found: list[Address] = []
    for name in _HEADERS:
        values = headers.get_all(name) or []
        found.extend(parse_addresses(str(v) for v in values))
    return found


@dataclass
class Match:
    """The records a message goes to, and why: which address found which record, which found none."""

    records: list[Record] = field(default_factory=list)
    hits: list[tuple[Address, Record]] = field(default_factory=list)
    missing: list[Address] = field(default_factory=list)
    ambiguous: list[tuple[Address, list[Record]]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        parts = [f"{a.addr} → {r.module}/{r.id}" + (f" ({r.name})" if r.name else "") for a, r in self.hits]
        parts += [f"ambiguous: {a.addr} is {', '.join(f'{r.module}/{r.id}' for r in rs)} (multiple = none-if-ambiguous)"
                  for a, rs in self.ambiguous]
        if self.missing:
            parts.append("no CRM record for " + ", ".join(a.addr for a in self.missing))
        return "; ".join(parts) or "no counterpart address"


class Matcher:
    """Finds each counterpart's records in the mailbox's modules and applies its ``multiple`` policy."""

    def __init__(self, lookup: RecordLookup):
        self._lookup = lookup

    def prefetched(self, raws: Iterable[RawMessage], mailbox: MailboxSettings) -> Iterator[RawMessage]:
        """``raws`` unchanged, but each ``batch_size`` of them only after one batched lookup of all their addresses.

        Only with ``batch_lookups`` and a cache: without COQL, looking up addresses that may not be
        counterparts costs calls; without a cache, a warm-up warms nothing.
        """
        policy = mailbox.match
        if not policy.batch_lookups or policy.cache_ttl <= 0:
            yield from raws
            return
        own = {address_key(a, strip_plus=policy.strip_plus_tags) for a in mailbox.addresses}
        chunk: list[RawMessage] = []
        for raw in raws:
            chunk.append(raw)
            if len(chunk) >= mailbox.batch_size:
                self._prefetch(chunk, own, policy)
                yield from chunk
                chunk = []
        self._prefetch(chunk, own, policy)
        yield from chunk

    def _prefetch(self, chunk: list[RawMessage], own: set[str | None], policy: MatchSettings) -> None:
        people = [a for raw in chunk if raw.data for a in header_addresses(raw.data)
                  if _key(a, policy) not in own and not is_blocked(a, policy)]
        if not people:
            return
        try:
            self._lookup.records(people, policy)
        except CrmTransientError as exc:  # only a warm-up: each message's own lookup retries and reports
            log.warning("prefetch_failed", error=str(exc))

    def match(self, people: Sequence[Address], policy: MatchSettings) -> Match:
        found = self._lookup.records(people, policy)
        result = Match()
        seen: set[tuple[str, str]] = set()
        for addr in people:
            records = found.get(_key(addr, policy), [])
            chosen = _choose(records, policy)
            if not records:
                result.missing.append(addr)
            elif not chosen:
                result.ambiguous.append((addr, records))
            for record in chosen:
                result.hits.append((addr, record))
                if (record.module, record.id) not in seen:
                    seen.add((record.module, record.id))
                    result.records.append(record)
        return result

    def known(self, keys: Sequence[str], policy: MatchSettings) -> set[str]:
        """Those of ``keys`` (address keys) that have a record now; absent ones are re-asked only after the cache expires."""
        people = [Address("", k) for k in keys]
        found = self._lookup.records(people, policy)
        return {_key(a, policy) for a in people if found.get(_key(a, policy))}


def _choose(records: list[Record], policy: MatchSettings) -> list[Record]:
    """``records`` come in module priority order; ``first`` takes the oldest record of the first module."""
    if policy.multiple == "all" or not records:
        return records
    if policy.multiple == "first":
        first = [r for r in records if r.module == records[0].module]
        return [min(first, key=lambda r: (len(r.id), r.id))]
    return records if len(records) == 1 else []


def _key(addr: Address, policy: MatchSettings) -> str:
    return address_key(addr.addr, strip_plus=policy.strip_plus_tags) or addr.key


def _unique(addresses: Iterable[Address], policy: MatchSettings) -> list[Address]:
    seen: set[str] = set()
    result = []
    for addr in addresses:
        key = _key(addr, policy)
        if key not in seen:
            seen.add(key)
            result.append(addr)
    return result
