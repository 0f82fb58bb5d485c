"""Whose mail a mailbox holds: the Zoho user syncd files it under.

A mailbox may name its owner by ``owner_id`` or ``owner_email`` (looked up among the active
users once). When that owner is the token's own user nothing changes: Zoho files the mail
under whoever calls. Otherwise every associate_email carries ``owner`` — which Zoho only
accepts from an administrator (NO_PERMISSION otherwise, turned into an error that says so).
The Link/Unlink Deal API always needs an owner: the mailbox's, else the token's user.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from syncd.crm import Crm
from syncd.errors import CrmError, CrmOrgError


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    email: str
    admin: bool = False


def _user(item: dict) -> User:
    admin = (item.get("profile") or {}).get("name") == "Administrator"
    return User(str(item.get("id", "")), str(item.get("full_name") or ""), str(item.get("email") or ""), admin)


class MailboxOwner:
    """Resolves a mailbox's owner lazily (first use, then cached), so a CRM outage cannot stop syncd starting."""

    def __init__(self, crm: Crm, *, mailbox: str, owner_id: str | None = None, owner_email: str | None = None):
        self._crm = crm
        self._mailbox = mailbox
        self._owner_id = owner_id
        self._owner_email = owner_email
        self._lock = threading.Lock()
        self._resolved: tuple[User, User] | None = None

    @property
    def configured(self) -> bool:
        return bool(self._owner_id or self._owner_email)

    def owner_key(self) -> str | None:
        """The ``owner`` id associate_email must carry; None when the mail is the token user's own."""
        if not self.configured:
            return None
        owner, me = self._resolve()
        return None if owner.id == me.id else owner.id

    def acting_user(self) -> User:
        """The user the Link/Unlink Deal API acts for: the mailbox's owner, else the token's user."""
        return self._resolve()[0]

    def _resolve(self) -> tuple[User, User]:
        with self._lock:
            if self._resolved is not None:
                return self._resolved
        me = _user((self._crm.users("CurrentUser") or [{}])[0])
        owner = me
        if self._owner_id or self._owner_email:
            owner = self._find(me)
        with self._lock:
            self._resolved = (owner, me)
        return owner, me

    def _find(self, me: User) -> User:
        if self._owner_id == me.id or (self._owner_email or "").casefold() == me.email.casefold() != "":
            return me
        for item in self._crm.users("ActiveUsers"):
            user = _user(item)
            if user.id == self._owner_id or (self._owner_email and user.email.casefold() == self._owner_email.casefold()):
                return user
        wanted = f"owner_id {self._owner_id}" if self._owner_id else f"owner_email {self._owner_email}"
        raise CrmOrgError(
            f"mailbox {self._mailbox}: {wanted} is not an active Zoho CRM user; fix the mailbox's owner setting",
            code="OWNER_NOT_FOUND",
        )

    def check(self) -> tuple[bool, str]:
        """For `syncd check`: whose mail this is, and whether Zoho will let syncd file it so."""
        try:
            owner, me = self._resolve()
        except CrmError as exc:
            return False, str(exc)
        if owner.id == me.id:
            return True, f"mail filed as {me.email or me.id}, the token's own user"
        if me.admin:
            return True, f"mail filed as {owner.email or owner.id} (user {owner.id}) by the administrator {me.email}"
        return False, (f"mail is to be filed as {owner.email or owner.id} (user {owner.id}), but the token's user "
                       f"{me.email or me.id} is no administrator: Zoho will answer NO_PERMISSION. Fix: authorise syncd "
                       f"as an admin user, or remove owner_id/owner_email from mailbox {self._mailbox}")

    def no_permission(self, exc: CrmOrgError) -> CrmOrgError:
        """Zoho's NO_PERMISSION for an ``owner`` key, said in terms of what to change."""
        owner, me = self._resolve()
        return CrmOrgError(
            f"mailbox {self._mailbox}: Zoho refused to file mail as {owner.name or owner.id} (user {owner.id}): "
            f"only an administrator may associate another user's mail, and syncd's token belongs to "
            f"{me.email or me.id}, who is not one (NO_PERMISSION). Fix: authorise syncd as an admin user, or remove "
            f"owner_id/owner_email from mailbox {self._mailbox}. Its mail waits in the ledger as retry. ({exc})",
            code="NO_PERMISSION",
            status=exc.status,
        )
