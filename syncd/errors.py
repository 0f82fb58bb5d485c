"""syncd's exception hierarchy.

Adapters (IMAP, CRM, ledger) translate their library's exceptions into these once,
at the boundary; everything above them only ever sees a ``SyncdError``.

    SyncdError
    ├── ConfigError            bad configuration: refuse to start (exit 2)
    ├── ParseError             one message cannot be read: quarantine it
    ├── SourceError            the mail source failed
    │   ├── SourceAuthError    login refused: nothing to retry until the config changes
    │   └── FolderError        a folder is missing or cannot be selected
    ├── CrmError               the CRM failed
    │   ├── CrmTransientError  timeouts, 5xx, 429, resets: retry with backoff
    │   │   └── CrmOutcomeUnknown  the request may have been applied: resend only if idempotent
    │   ├── CrmOrgError        org-wide (auth, scope, permission, storage): pause CRM work
    │   └── CrmRejected        this one request is refused (INVALID_DATA, ...): quarantine
    └── LedgerError            the ledger cannot be read or written
        └── MailboxBusy        another process is syncing this mailbox into the same ledger
"""

from __future__ import annotations

from dataclasses import dataclass


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where it is and how to fix it."""

    file: str
    key: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        text = f"{where}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class ConfigError(SyncdError):
    """The configuration is unusable; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ParseError(SyncdError):
    """A message's bytes cannot be turned into an Email."""


class SourceError(SyncdError):
    """The mail source failed (connection, protocol); usually transient."""


class SourceAuthError(SourceError):
    """The mail server refused the login."""


class FolderError(SourceError):
    """A configured folder does not exist or cannot be selected."""


class CrmError(SyncdError):
    """The CRM failed; ``code`` is Zoho's error code when it gave one."""

    def __init__(self, message: str, *, code: str = "", status: int = 0):
        self.code = code
        self.status = status
        super().__init__(message)


class CrmTransientError(CrmError):
    """Worth retrying later: timeouts, 5xx, 429, connection faults."""

    def __init__(self, message: str, *, code: str = "", status: int = 0, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message, code=code, status=status)


class CrmOutcomeUnknown(CrmTransientError):
    """The request left this process and no answer came back: it may have been applied."""


class CrmOrgError(CrmError):
    """Org-wide failure (credentials, scope, permission, storage): no call can succeed until an operator acts."""


class CrmRejected(CrmError):
    """The CRM refused this one request for good (INVALID_DATA, MANDATORY_NOT_FOUND, FILE_SIZE_EXCEEDS, ...)."""


class LedgerError(SyncdError):
    """The ledger cannot be opened, read or written."""


class MailboxBusy(LedgerError):
    """Another syncd process holds this mailbox's lock on the same ledger: this pass is skipped."""
