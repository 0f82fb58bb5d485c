"""Filter: messages that are not conversations with a customer and must not reach the CRM."""

from __future__ import annotations

from collections.abc import Iterable

from syncd.email import Email

_BOUNCE_SENDERS = ("mailer-daemon@", "postmaster@")


def skip_reason(email: Email, *, sent: bool, own: Iterable[str]) -> str:
    """Why ``email`` is skipped, or '' to go on: auto-replies, bounces, list mail, internal-only mail."""
    auto = email.header("Auto-Submitted").strip().lower()
    if auto and auto != "no":
        return f"auto-reply (Auto-Submitted: {auto})"
    if email.header("X-Autoreply") or email.header("X-Autorespond"):
        return "auto-reply (X-Autoreply)"
    precedence = email.header("Precedence").strip().lower()
    if precedence in ("auto_reply", "bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    if "multipart/report" in email.header("Content-Type").lower():
        return "bounce (multipart/report)"
    if not sent and email.sender and email.sender.key.startswith(_BOUNCE_SENDERS):
        return f"bounce (from {email.sender.addr})"
    if email.header("List-Id"):
        return "mailing list (List-Id)"
    own_keys = {a.casefold() for a in own}
    if own_keys and email.participants and all(a.key in own_keys for a in email.participants):
        return "internal: every participant is this mailbox"
    return ""
