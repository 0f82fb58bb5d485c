"""Address keys: the one form in which syncd compares addresses, and the forms it asks Zoho for.

A key is the canonical address (see ``syncd.parse.addresses``: domain IDNA-decoded to Unicode)
case-folded whole, optionally without the ``+tag`` of its local part. Zoho stores whatever
people typed, so lookups ask for every spelling that has the same key: as written, lower-case,
and with the domain in ASCII (punycode).
"""

from __future__ import annotations

from collections.abc import Iterable

from syncd.parse.addresses import canonical_addr


def address_key(addr: str, *, strip_plus: bool = False) -> str | None:
    """An address in the form it is compared in, or None when it cannot be one."""
    canonical = canonical_addr(addr.strip())
    if canonical is None:
        return None
    local, _, domain = canonical.casefold().rpartition("@")
    return f"{_untagged(local) if strip_plus else local}@{domain}"


def domain_key(domain: str) -> str | None:
    """A domain in the form addresses are compared in, or None when it cannot be one."""
    bare = domain.strip().lstrip("@")
    canonical = canonical_addr("x@" + bare) if bare and "@" not in bare else None
    return canonical.rpartition("@")[2].casefold() if canonical else None


def in_domains(key: str, domains: Iterable[str]) -> bool:
    """Whether the address ``key`` is in one of ``domains`` or a subdomain of one."""
    domain = key.rpartition("@")[2]
    return any(domain == d or domain.endswith("." + d) for d in domains)


def query_forms(addr: str, *, strip_plus: bool) -> list[str]:
    """The spellings to ask Zoho for: as written, lower-case, with an ASCII (punycode) domain, untagged."""
    local, _, domain = addr.strip().rpartition("@")
    locals_ = list(dict.fromkeys([local, _untagged(local) if strip_plus else local]))
    domains = [domain]
    try:
        domains.append(domain.encode("idna").decode("ascii"))
    except UnicodeError:
        pass  # not IDNA-encodable: the form as written is all Zoho can hold
    forms = [f"{lp}@{d}" for lp in locals_ for d in domains]
    return list(dict.fromkeys(forms + [f.lower() for f in forms]))


def _untagged(local: str) -> str:
    """``bob+news`` → ``bob``; a leading ``+`` or a quoted local part is left alone."""
    if local.startswith('"') or "+" not in local[1:]:
        return local
    return local[: local.index("+", 1)]
