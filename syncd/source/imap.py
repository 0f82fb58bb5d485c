"""The IMAP mail source, over imapclient.

Read-only by construction: folders are selected with EXAMINE, bodies fetched with
``BODY.PEEK[]``. Every imapclient, socket and ssl error is translated here into
``SourceError`` (or ``SourceAuthError`` / ``FolderError``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from syncd.errors import FolderError, SourceAuthError, SourceError
from syncd.settings import MailboxSettings
from syncd.source import Folder, RawMessage, Selected
from syncd.source._common import batches, folder_list
from syncd.source.oauth import tokens_for

# A FETCH command must stay well under servers' line limits (Dovecot: 64 KB);
# 2000 UIDs of at most 10 digits plus commas is under 22 KB.
MAX_UIDS_PER_FETCH = 2000
SENT_FLAG = b"\\Sent"
DRAFTS_FLAG = b"\\Drafts"
T = TypeVar("T")


def is_loopback(host: str, port: int) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise SourceError(f"cannot resolve IMAP host {host!r}: {e}") from e
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


class ImapSource:
    """One IMAP mailbox; connects and logs in on ``__enter__`` (or the first call)."""

    def __init__(self, settings: MailboxSettings):
        self.settings = settings
        self._client: IMAPClient | None = None
        self._selected: str | None = None

    @property
    def _where(self) -> str:
        s = self.settings
        return f"mailbox {s.name!r} ({s.host}:{s.port})"

    def __enter__(self) -> ImapSource:
        self._connected()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        client, self._client, self._selected = self._client, None, None
        if client is None:
            return
        try:
            client.logout()
        except (IMAPClientError, OSError):
            _drop(client)  # the connection is already gone; only the socket is left to release

    def folders(self) -> list[Folder]:
        listing = self._call("LIST", lambda c: c.list_folders())
        sent = self.settings.sent_folders
        if sent is None:
            sent = tuple(name for flags, _, name in listing if SENT_FLAG in flags)
        drafts = {name for flags, _, name in listing if DRAFTS_FLAG in flags}
        return [replace(f, drafts=f.name in drafts) for f in folder_list(self.settings.folders, sent)]

    def select(self, folder: str) -> Selected:
        self._selected = None
        try:
            info = self._call(f"SELECT {folder!r}", lambda c: c.select_folder(folder, readonly=True))
        except SourceError as e:
            if self._client is None:  # the connection died: not the folder's fault
                raise
            existing = sorted(name for _, _, name in self._call("LIST", lambda c: c.list_folders()))
            if folder in existing:
                raise FolderError(f"{self._where}: cannot select folder {folder!r}: {e}") from e
            raise FolderError(
                f"{self._where}: folder {folder!r} does not exist; existing folders: {', '.join(existing)}"
            ) from e
        self._selected = folder
        return Selected(folder, int(info[b"UIDVALIDITY"]), int(info[b"EXISTS"]))

    def uids_after(self, last_uid: int) -> list[int]:
        self._require_selected()
        # "N:*" always matches the last message, even when its UID is below N
        found = self._call("UID SEARCH", lambda c: c.search(["UID", f"{last_uid + 1}:*"]))
        return sorted(uid for uid in found if uid > last_uid)

    def uids_since(self, day: date) -> list[int]:
        self._require_selected()
        return sorted(self._call("UID SEARCH", lambda c: c.search(["SINCE", day])))

    def fetch(self, uids: Sequence[int], *, max_size: int | None = None) -> Iterator[RawMessage]:
        self._require_selected()
        size = max(1, min(self.settings.batch_size, MAX_UIDS_PER_FETCH))
        for batch in batches(uids, size):
            yield from self._fetch_batch(batch, max_size)

    def _fetch_batch(self, batch: list[int], max_size: int | None) -> Iterator[RawMessage]:
        meta = self._call("FETCH", lambda c: c.fetch(batch, ["RFC822.SIZE", "INTERNALDATE", "FLAGS"]))
        # UIDs missing from the answer were expunged since the SEARCH; unsolicited
        # FETCH responses (flag updates) lack the size and are ignored too
        asked = set(batch)
        present = {uid: m for uid, m in meta.items() if uid in asked and b"RFC822.SIZE" in m}
        wanted = {uid for uid, m in present.items() if max_size is None or m[b"RFC822.SIZE"] <= max_size}
        bodies = self._call("FETCH", lambda c: c.fetch(sorted(wanted), ["BODY.PEEK[]"])) if wanted else {}
        too_large = sorted(set(present) - wanted)
        # Only the header of a message over the cap: its Message-ID and subject for the ledger, not its bulk.
        headers = self._call("FETCH", lambda c: c.fetch(too_large, ["BODY.PEEK[HEADER]"])) if too_large else {}
        for uid in sorted(present):
            size: int = present[uid][b"RFC822.SIZE"]
            date: datetime | None = present[uid].get(b"INTERNALDATE")
            flags = tuple(present[uid].get(b"FLAGS", ()))
            if uid not in wanted:
                yield RawMessage(uid, size, date, None, flags, header=headers.get(uid, {}).get(b"BODY[HEADER]"))
            elif b"BODY[]" in bodies.get(uid, {}):
                yield RawMessage(uid, size, date, bodies[uid][b"BODY[]"], flags)

    def _require_selected(self) -> None:
        if self._selected is None:
            raise SourceError(f"{self._where}: no folder selected")

    def _call(self, what: str, op: Callable[[IMAPClient], T]) -> T:
        """Run ``op(client)`` with imapclient's, socket and ssl errors turned into SourceError."""
        client = self._connected()
        try:
            return op(client)
        except (IMAPClientAbortError, OSError) as e:
            self.close()  # the connection is unusable; the next call reconnects
            raise SourceError(f"{self._where}: connection lost during {what}: {e}") from e
        except IMAPClientError as e:
            raise SourceError(f"{self._where}: {what} failed: {e}") from e

    def _connected(self) -> IMAPClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> IMAPClient:
        s = self.settings
        if s.security == "none" and not s.allow_insecure and not is_loopback(s.host, s.port):
            raise SourceError(
                f"{self._where}: refusing unencrypted IMAP to a non-loopback host "
                f"(fix: set security = \"tls\" or \"starttls\", or allow_insecure = true)"
            )
        context = self._tls_context() if s.security != "none" else None
        try:
            client = IMAPClient(s.host, s.port, ssl=s.security == "tls", ssl_context=context, timeout=s.timeout)
        except ssl.SSLCertVerificationError as e:
            raise self._tls_refused(e) from e
        except (IMAPClientError, OSError) as e:
            raise SourceError(f"{self._where}: cannot connect: {e}") from e
        # timezone-aware INTERNALDATE values, not converted to this machine's local time
        client.normalise_times = False
        try:
            if context is not None and s.security == "starttls":
                client.starttls(context)
            self._login(client)
        except LoginError as e:
            _drop(client)
            raise SourceAuthError(f"{self._where}: login refused for user {s.username!r}: {e}") from e
        except ssl.SSLCertVerificationError as e:
            _drop(client)
            raise self._tls_refused(e) from e
        except (IMAPClientError, OSError) as e:
            _drop(client)
            raise SourceError(f"{self._where}: cannot log in: {e}") from e
        except SourceError:  # no OAuth access token to be had
            _drop(client)
            raise
        return client

    def _login(self, client: IMAPClient) -> None:
        """LOGIN with the password, or AUTHENTICATE with an OAuth access token.

        A refused token (revoked, or expired early) is dropped and a fresh one tried once
        on the same connection, so a revocation costs one poll nothing.
        """
        s = self.settings
        if s.auth == "password":
            client.login(s.username, s.password.reveal())
            return
        tokens = tokens_for(s)
        for attempt in (1, 2):
            token = tokens.token()
            try:
                if s.auth == "xoauth2":
                    client.oauth2_login(s.username, token)
                else:
                    client.oauthbearer_login(s.username, token)
                return
            except LoginError:
                tokens.invalidate(token)
                if attempt == 2:
                    raise

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.settings.ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.settings.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise SourceError(f"{self._where}: cannot load ca_file {str(self.settings.ca_file)!r}: {e}") from e
        return context

    def _tls_refused(self, e: ssl.SSLCertVerificationError) -> SourceError:
        return SourceError(
            f"{self._where}: TLS certificate verification failed: {e.verify_message or e} "
            f"(fix: set ca_file to the CA that signed the server's certificate, or fix the host name)"
        )


def _drop(client: IMAPClient) -> None:
    """Close the socket without a LOGOUT, whatever state it is in."""
    with contextlib.suppress(OSError):
        client.shutdown()
