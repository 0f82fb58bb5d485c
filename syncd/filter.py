"""Filter: messages that are not conversations with a customer and must not reach the CRM.

Each rule but the draft one can be switched off per mailbox (``[match]``): auto-replies
(RFC 3834 ``Auto-Submitted``, ``X-Autoreply``, ``Precedence: auto_reply``), bounces
(``multipart/report``, MAILER-DAEMON), list mail (``List-Id``, ``Precedence: bulk|list``),
internal-only mail (every participant is the mailbox or in ``internal_domains``) and mail
whose every counterpart is blocked. Drafts are never imported.
"""

from __future__ import annotations

from collections.abc import Iterable

from syncd.addrkey import address_key, in_domains
from syncd.email import Email
from syncd.match import candidates, counterparts, is_blocked
from syncd.settings import MatchSettings

_BOUNCE_SENDERS = ("mailer-daemon@", "postmaster@")
DRAFT_FLAG = b"\\Draft"


def draft_reason(flags: Iterable[bytes], *, drafts_folder: bool) -> str:
    """'draft ...' for a message flagged ``\\Draft`` or sitting in the Drafts folder, else ''."""
    if drafts_folder:
        return "draft (Drafts folder): never imported"
    if any(f.lower() == DRAFT_FLAG.lower() for f in flags):
        return "draft (\\Draft flag): never imported"
    return ""


def skip_reason(email: Email, *, sent: bool, own: Iterable[str], policy: MatchSettings = MatchSettings()) -> str:
    """Why ``email`` is skipped, or '' to go on."""
    own = tuple(own)
    for rule, on in ((_auto_reply, policy.skip_auto_replies), (_bounce, policy.skip_bounces), (_list_mail, policy.skip_lists)):
        reason = on and rule(email, sent)
        if reason:
            return reason
    return _internal(email, own, policy) or _all_blocked(email, sent, own, policy)


def _auto_reply(email: Email, sent: bool) -> str:
    auto = email.header("Auto-Submitted").strip().lower()
    if auto and auto != "no":
        return f"auto-reply (Auto-Submitted: {auto})"
    if email.header("X-Autoreply") or email.header("X-Autorespond"):
        return "auto-reply (X-Autoreply)"
    if email.header("Precedence").strip().lower() == "auto_reply":
        return "auto-reply (Precedence: auto_reply)"
    return ""


def _bounce(email: Email, sent: bool) -> str:
    if "multipart/report" in email.header("Content-Type").lower():
        return "bounce (multipart/report)"
    if not sent and email.sender and email.sender.key.startswith(_BOUNCE_SENDERS):
        return f"bounce (from {email.sender.addr})"
    return ""


def _list_mail(email: Email, sent: bool) -> str:
    precedence = email.header("Precedence").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"list mail (Precedence: {precedence})"
    if email.header("List-Id"):
        return "list mail (List-Id)"
    return ""


def _internal(email: Email, own: tuple[str, ...], policy: MatchSettings) -> str:
    strip = policy.strip_plus_tags
    own_keys = {address_key(a, strip_plus=strip) for a in own}
    keys = [address_key(a.addr, strip_plus=strip) or a.key for a in email.participants]
    if not keys or not all(k in own_keys or in_domains(k, policy.internal_domains) for k in keys):
        return ""
    if policy.internal_domains:
        return f"internal: every participant is this mailbox or in {', '.join(policy.internal_domains)}"
    return "internal: every participant is this mailbox"


def _all_blocked(email: Email, sent: bool, own: tuple[str, ...], policy: MatchSettings) -> str:
    blocked = [a.addr for a in candidates(email, sent=sent, policy=policy) if is_blocked(a, policy)]
    if blocked and not counterparts(email, sent=sent, own=own, policy=policy):
        return "blocked: " + ", ".join(blocked)
    return ""
