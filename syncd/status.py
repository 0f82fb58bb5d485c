"""``syncd status``: per mailbox, the last poll, the lag, the ledger's counts, the last error and what to do.

Everything comes from the ledger (the daemon records each pass there), so ``status``
works from another shell, or another container, while the daemon runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from syncd.ledger import PollRow, State
from syncd.settings import MailboxSettings

LATE_AFTER_INTERVALS = 3
"""A mailbox is late when its last good pass is older than this many poll intervals (plus a minute)."""

COLUMNS = (State.DONE, State.DUPLICATE, State.UNMATCHED, State.SKIPPED, State.QUARANTINED, State.RETRY, State.PENDING)

# What an operator does about the last error, by its class (see syncd.errors).
_ADVICE = {
    "SourceAuthError": "the mail server refused the login: fix this mailbox's username and password "
                       "(or its oauth_* keys), then run `syncd check`",
    "SourceError": "the mail server was unreachable or dropped the connection: syncd tries again every poll; "
                   "if it lasts, check host, port and security, then run `syncd check`",
    "FolderError": "a configured folder is missing or cannot be selected: fix folders / sent_folders "
                   "(the error lists the existing folders)",
    "CrmOrgError": "Zoho refused syncd as a whole (credentials, scope, permission or storage): fix what the error "
                   "names, then run `syncd check`; messages wait in the ledger meanwhile",
    "CrmTransientError": "Zoho was unavailable or rate-limited: nothing to do, syncd retries with backoff",
    "CrmOutcomeUnknown": "Zoho did not answer: nothing to do, syncd resends and Zoho's DUPLICATE_DATA prevents copies",
    "LedgerError": "the ledger could not be read or written: check [ledger] path, free disk space and permissions",
    "internal": "a bug in syncd: the log holds the traceback (event pass_crashed); please report it",
}


@dataclass(frozen=True)
class MailboxStatus:
    name: str
    poll_interval: float
    poll: PollRow | None
    counts: Mapping[State, int]
    now: datetime

    @property
    def lag(self) -> float | None:
        """Seconds since the last pass without error (None: never had one)."""
        if self.poll is None or self.poll.last_success is None:
            return None
        return max(0.0, (self.now - self.poll.last_success).total_seconds())

    @property
    def failing(self) -> bool:
        """The last pass met an error."""
        p = self.poll
        return p is not None and p.error_at is not None and (p.last_success is None or p.error_at >= p.last_success)

    @property
    def state(self) -> str:
        if self.poll is None:
            return "never polled"
        if self.failing:
            return "failing"
        lag = self.lag
        if lag is not None and lag > LATE_AFTER_INTERVALS * self.poll_interval + 60:
            return "late"
        return "ok"

    @property
    def advice(self) -> list[str]:
        todo = []
        if self.poll is None:
            todo.append("no pass recorded yet: start the daemon (`syncd run`) or run `syncd once`")
        elif self.failing:
            todo.append(_ADVICE.get(self.poll.error_kind, "see the error above and the log"))
        elif self.state == "late":
            todo.append("no pass finished lately: is the daemon running? (`systemctl status syncd`, its log)")
        quarantined = self.counts.get(State.QUARANTINED, 0)
        if quarantined:
            todo.append(f"{quarantined} quarantined: see why with `syncd ledger list --state quarantined --mailbox "
                        f"{self.name}`, fix, then `syncd ledger retry --state quarantined --mailbox {self.name}`")
        return todo

    def as_json(self) -> dict[str, Any]:
        p = self.poll
        return {
            "mailbox": self.name,
            "state": self.state,
            "last_poll": _iso(p.last_poll if p else None),
            "last_success": _iso(p.last_success if p else None),
            "lag_seconds": self.lag,
            "poll_interval": self.poll_interval,
            "counts": {str(s): self.counts.get(s, 0) for s in COLUMNS},
            "last_error": p.last_error if p and p.error_at else None,
            "error_kind": p.error_kind if p and p.error_at else None,
            "error_at": _iso(p.error_at if p else None),
            "error_current": self.failing,
            "advice": self.advice,
        }


def collect(mailboxes: Sequence[MailboxSettings], polls: Mapping[str, PollRow],
            counts: Mapping[tuple[str, State], int], now: datetime | None = None) -> list[MailboxStatus]:
    """The status of each configured mailbox, in configuration order."""
    now = now or datetime.now(UTC)
    return [
        MailboxStatus(m.name, m.poll_interval, polls.get(m.name), {s: n for (mb, s), n in counts.items() if mb == m.name}, now)
        for m in mailboxes
    ]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def print_table(statuses: Sequence[MailboxStatus]) -> None:
    """One row per mailbox, then each mailbox's last error and what to do."""
    head = ["MAILBOX", "STATE", "LAST POLL (UTC)", "LAG", *(s.value.upper() for s in COLUMNS)]
    rows = [head]
    for st in statuses:
        last = st.poll.last_poll.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if st.poll else "never"
        rows.append([st.name, st.state, last, _ago(st.lag), *(str(st.counts.get(s, 0)) for s in COLUMNS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for st in statuses:
        p = st.poll
        if p is not None and st.failing:
            click.echo(f"\n{st.name}: last error at {p.error_at:%Y-%m-%d %H:%M:%S}: {p.last_error}")
        elif st.advice:
            click.echo(f"\n{st.name}:")
        for line in st.advice:
            click.echo(f"  what to do: {line}")
