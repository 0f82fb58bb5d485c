"""ImapSource against a real Dovecot: read-only access, folder roles, TLS, errors, batching."""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from imapclient.exceptions import IMAPClientError

from syncd.errors import FolderError, SourceAuthError, SourceError
from syncd.settings import Secret
from syncd.source import Folder
from syncd.source.imap import ImapSource
from tests.fixtures.wait import wait_until
from tests.fixtures.dovecot import Dovecot, ImapUser
from tests.source.test_contract import message


def test_fetch_leaves_flags_unchanged(imap_user: ImapUser) -> None:
    """Fetching bodies never sets \\Seen nor changes any other flag."""
    plain = imap_user.append("INBOX", message(1))
    flagged = imap_user.append("INBOX", message(2), flags=["\\Flagged"])
    with ImapSource(imap_user.settings()) as source:
        source.select("INBOX")
        assert [m.data for m in source.fetch([plain, flagged])] == [message(1), message(2)]
    assert b"\\Seen" not in imap_user.flags("INBOX", plain)
    assert set(imap_user.flags("INBOX", flagged)) - {b"\\Recent"} == {b"\\Flagged"}


def test_internaldate_is_the_servers(imap_user: ImapUser) -> None:
    """RawMessage.internaldate is the server's INTERNALDATE, timezone-aware."""
    when = datetime(2023, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    uid = imap_user.append("INBOX", message(1), internaldate=when)
    with ImapSource(imap_user.settings()) as source:
        source.select("INBOX")
        [got] = source.fetch([uid])
    assert got.internaldate == when


def test_sent_folder_discovered_by_special_use(imap_user: ImapUser) -> None:
    """With sent_folders unset, folders marked \\Sent are added as sent; configured ones stay received."""
    imap_user.create_folder("Archive")
    with ImapSource(imap_user.settings(folders=("INBOX", "Archive"))) as source:
        assert source.folders() == [Folder("INBOX"), Folder("Archive"), Folder("Sent", sent=True)]


def test_explicit_sent_folders_replace_discovery(imap_user: ImapUser) -> None:
    """sent_folders, when given, are the sent folders (even empty); a folder in both lists is sent."""
    with ImapSource(imap_user.settings(sent_folders=("Outbox",))) as source:
        assert source.folders() == [Folder("INBOX"), Folder("Outbox", sent=True)]
    with ImapSource(imap_user.settings(sent_folders=())) as source:
        assert source.folders() == [Folder("INBOX")]
    with ImapSource(imap_user.settings(folders=("INBOX", "Sent"), sent_folders=("Sent",))) as source:
        assert source.folders() == [Folder("INBOX"), Folder("Sent", sent=True)]


def test_missing_folder_names_existing(imap_user: ImapUser) -> None:
    """Selecting a missing folder raises FolderError listing the folders that exist."""
    with ImapSource(imap_user.settings()) as source, pytest.raises(FolderError, match="'Gone'.*INBOX, Sent"):
        source.select("Gone")


def test_renamed_folder_is_missing(imap_user: ImapUser) -> None:
    """A folder renamed on the server is reported missing under its old name, found under the new."""
    imap_user.create_folder("Old")
    imap_user.rename_folder("Old", "New")
    with ImapSource(imap_user.settings()) as source:
        with pytest.raises(FolderError, match="'Old'.*New"):
            source.select("Old")
        assert source.select("New").exists == 0


def test_tls_verified_with_ca_file(imap_user: ImapUser) -> None:
    """Implicit TLS with the test CA as ca_file connects and logs in."""
    settings = imap_user.settings(security="tls", port=imap_user.tls_port, ca_file=imap_user.ca_file)
    with ImapSource(settings) as source:
        assert source.select("INBOX").exists == 0


def test_starttls_verified_with_ca_file(imap_user: ImapUser) -> None:
    """STARTTLS on the plain port with the test CA as ca_file connects and logs in."""
    with ImapSource(imap_user.settings(security="starttls", ca_file=imap_user.ca_file)) as source:
        assert source.select("INBOX").exists == 0


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_untrusted_certificate_refused(imap_user: ImapUser, security: str) -> None:
    """Without the CA in ca_file the server's certificate is refused, with a fix naming ca_file."""
    port = imap_user.tls_port if security == "tls" else imap_user.port
    with pytest.raises(SourceError, match="certificate verification failed.*ca_file") as raised:
        ImapSource(imap_user.settings(security=security, port=port)).__enter__()
    assert not isinstance(raised.value, SourceAuthError)


def test_unreadable_ca_file_refused(imap_user: ImapUser, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A ca_file that cannot be loaded is a SourceError naming the file."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(SourceError, match="missing.pem"):
        ImapSource(imap_user.settings(security="tls", port=imap_user.tls_port, ca_file=missing)).__enter__()


def test_plaintext_to_remote_host_refused(imap_user: ImapUser) -> None:
    """security = "none" to a non-loopback host is refused before connecting, unless allow_insecure."""
    with pytest.raises(SourceError, match="unencrypted.*allow_insecure"):
        ImapSource(imap_user.settings(host="192.0.2.1")).__enter__()


def test_wrong_password(imap_user: ImapUser) -> None:
    """A refused login is SourceAuthError naming mailbox and user, never the password."""
    settings = imap_user.settings(password=Secret("not-the-Password-42"))
    with pytest.raises(SourceAuthError) as raised:
        ImapSource(settings).__enter__()
    text = f"{raised.value} {raised.value.__cause__!r}"
    assert settings.name in text and imap_user.username in text
    assert "not-the-Password-42" not in text


def test_replaced_password_file_is_used_at_the_next_login(imap_user: ImapUser, dovecot: Dovecot, tmp_path: Path) -> None:
    """The mailbox's password changed on the server: logins fail until the new one is written into password_file, then the next one works."""
    path = tmp_path / "sales.password"
    path.write_text(imap_user.password + "\n")
    settings = imap_user.settings(password=Secret.from_file(path))
    with ImapSource(settings) as source:
        source.select("INBOX")
    changed = "changed-" + secrets.token_urlsafe(16)
    dovecot.add_user(imap_user.username, changed)  # the password is changed on the server
    wait_until(lambda: _logs_in(replace(imap_user, password=changed)), "Dovecot to re-read its passwd-file")
    with pytest.raises(SourceAuthError):
        ImapSource(settings).__enter__()
    path.write_text(changed + "\n")  # the operator writes it into the file; syncd keeps running
    with ImapSource(settings) as source:
        assert source.select("INBOX").uidvalidity


def _logs_in(user: ImapUser) -> bool:
    """True when the server takes this user's password now (Dovecot re-reads a passwd-file at most once a second)."""
    try:
        with user.client():
            return True
    except IMAPClientError:
        return False


def test_server_down(imap_user: ImapUser) -> None:
    """Nothing listening on the port is a SourceError saying the connection failed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(SourceError, match="cannot connect"):
        ImapSource(imap_user.settings(port=closed_port)).__enter__()


def test_silent_server_times_out(imap_user: ImapUser) -> None:
    """A server that never greets fails within settings.timeout as a SourceError."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(SourceError):
            ImapSource(imap_user.settings(port=silent.getsockname()[1], timeout=0.3)).__enter__()
    assert time.monotonic() - started < 5


def test_disconnect_is_source_error_then_reconnects(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """A dropped connection surfaces as SourceError; the next select reconnects."""
    uid = imap_user.append("INBOX", message(1))
    with ImapSource(imap_user.settings()) as source:
        source.select("INBOX")
        dovecot.kick(imap_user.username)
        with pytest.raises(SourceError, match="connection lost"):
            source.uids_after(0)
        source.select("INBOX")
        assert [m.uid for m in source.fetch(source.uids_after(0))] == [uid]


def test_fetch_in_batches(imap_user: ImapUser) -> None:
    """More messages than batch_size are fetched over several batches, in order, with max_size per message."""
    bodies = [message(n, b"z" * (3000 if n % 4 == 0 else 0)) for n in range(11)]
    uids = imap_user.append_many("INBOX", bodies)
    with ImapSource(imap_user.settings(batch_size=3)) as source:
        source.select("INBOX")
        got = list(source.fetch(uids, max_size=2000))
    assert [m.uid for m in got] == uids
    assert [m.data for m in got] == [b if len(b) <= 2000 else None for b in bodies]


def test_large_uid_list(imap_user: ImapUser) -> None:
    """A UID list far over the server's command length limit is split, whatever batch_size says."""
    uids = imap_user.append_many("INBOX", [message(1), message(2)])
    with ImapSource(imap_user.settings(batch_size=100_000)) as source:
        source.select("INBOX")
        got = list(source.fetch(range(1, 40_001)))
    assert [m.uid for m in got] == uids


def test_server_restart_is_source_error_then_reconnects(dovecot: Dovecot, imap_user: ImapUser) -> None:
    """A server restart mid-session surfaces as SourceError; the next select reconnects on the same port."""
    uid = imap_user.append("INBOX", message(1))
    with ImapSource(imap_user.settings()) as source:
        source.select("INBOX")
        dovecot.restart()
        with pytest.raises(SourceError):
            list(source.fetch([uid]))
        source.select("INBOX")
        assert [m.uid for m in source.fetch([uid])] == [uid]
