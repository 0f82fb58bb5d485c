"""Address headers to ``Address`` values in one canonical form.

Canonical form: the local part exactly as written, the domain lower-cased and IDNA-decoded
to Unicode (``xn--mller-kva.de`` and ``MÜLLER.de`` both become ``müller.de``), so the two
spellings of one mailbox compare equal when matching CRM records, and the stored form is
the one people read.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import getaddresses

from syncd.email import Address
from syncd.parse.text import decode_header, fold, from_wire

_FORBIDDEN = frozenset(" \t\r\n<>,;()\\")


def _canonical_label(label: str) -> str:
    """One domain label in Unicode, lower-case; a label IDNA refuses is only lower-cased."""
    try:
        return label.lower().encode("idna").decode("idna").lower()
    except UnicodeError:
        return label.lower()


def canonical_addr(addr: str) -> str | None:
    """``local@domain`` in canonical form, or None when it cannot be a mailbox address."""
    local, at, domain = fold(addr).rpartition("@")
    domain = domain.rstrip(".")
    if not at or not local or not domain or any(ch in _FORBIDDEN for ch in domain + local.strip('"')):
        return None
    if not domain.startswith("["):
        domain = ".".join(_canonical_label(label) for label in domain.split("."))
    return f"{local}@{domain}"


def parse_addresses(raw_values: Iterable[str]) -> tuple[Address, ...]:
    """Every valid address of all occurrences of one header, groups flattened, first of each duplicate kept."""
    seen: set[str] = set()
    result: list[Address] = []
    for name, addr in getaddresses([from_wire(value) for value in raw_values]):
        canonical = canonical_addr(addr)
        if canonical is None:
            continue
        address = Address(decode_header(name), canonical)
        if address.key not in seen:
            seen.add(address.key)
            result.append(address)
    return tuple(result)
