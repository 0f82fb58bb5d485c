"""Retroactive association: unmatched messages get another chance once their people are in the CRM.

An unmatched message leaves its counterparts' address keys in the ledger. For
``unmatched_window_days`` after that, each pass asks the CRM again about those addresses —
but an address is asked at most every ``unmatched_recheck`` seconds (the ledger keeps when it
was last asked: a negative-lookup cache that survives restarts), in batched lookups. Messages
whose addresses now have a record are processed again like new ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import structlog

from syncd.addrkey import address_key
from syncd.errors import CrmTransientError
from syncd.ledger import MessageKey, State
from syncd.ledger.sqlite import SqliteLedger
from syncd.match import Match, Matcher
from syncd.settings import MailboxSettings

log = structlog.get_logger("syncd.retro")


class Retro:
    """The retroactive part of one mailbox's passes."""

    def __init__(self, ledger: SqliteLedger, matcher: Matcher, mailbox: MailboxSettings):
        self._ledger = ledger
        self._matcher = matcher
        self._mailbox = mailbox

    def note(self, key: MessageKey, found: Match) -> None:
        """``key`` is unmatched: remember the addresses that had no record (an ambiguous one is not waited for)."""
        policy = self._mailbox.match
        keys = sorted({address_key(a.addr, strip_plus=policy.strip_plus_tags) or a.key for a in found.missing})
        if keys and policy.unmatched_window_days > 0:
            self._ledger.note_unmatched(key, keys)

    def due(self, folder: str, uidvalidity: int) -> set[int]:
        """UIDs of this folder's waiting messages that one of whose addresses now has a record."""
        policy = self._mailbox.match
        if policy.unmatched_window_days <= 0:
            return set()
        now = datetime.now(UTC)
        name = self._mailbox.name
        waiting = self._ledger.unmatched_due(name, folder, uidvalidity,
                                             since=now - timedelta(days=policy.unmatched_window_days),
                                             checked_before=now - timedelta(seconds=policy.unmatched_recheck))
        if not waiting:
            return set()
        keys = sorted({k for ks in waiting.values() for k in ks})
        try:
            known = self._matcher.known(keys, policy)
        except CrmTransientError as exc:  # the re-check waits for the next pass; new mail goes on now
            log.warning("unmatched_recheck_failed", folder=folder, error=str(exc))
            return set()
        self._ledger.mark_unmatched_checked(name, [k for k in keys if k not in known])
        return {uid for uid, ks in waiting.items() if known.intersection(ks)}

    def settle(self, folder: str, uidvalidity: int, verdicts: Mapping[int, State]) -> None:
        """Messages that came back and reached another state wait no more."""
        for uid, state in verdicts.items():
            if state != State.UNMATCHED:
                self._ledger.clear_unmatched(MessageKey(self._mailbox.name, folder, uidvalidity, uid))
