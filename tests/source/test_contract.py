"""The MailSource contract: every implementation (IMAP on Dovecot, Maildir, mbox) passes these."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from syncd.errors import FolderError, SourceError
from syncd.settings import MailboxSettings
from syncd.source import Folder, MailSource, open_source


def message(n: int, body: bytes = b"") -> bytes:
    return (
        f"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@example.com>\r\nDate: Mon, 1 Jan 2024 10:00:0{n % 10} +0000\r\n\r\n"
        f"Hello {n}.\r\n"
    ).encode() + body


SAMPLES = [message(1), message(2, b"x" * 5000 + b"\r\n"), message(3), message(4, b"y" * 9000 + b"\r\n")]
LARGE = 4000  # a max_size between the small and the large samples


@dataclass
class World:
    """A mailbox holding SAMPLES in ``folder``, plus ways to change it behind the source's back."""

    settings: MailboxSettings
    folder: str
    folders: list[Folder]
    uids: list[int]
    add: Callable[[bytes], int]
    remove_last: Callable[[], None]
    stored: dict[int, bytes] = field(default_factory=dict)

    def source(self) -> MailSource:
        return open_source(self.settings)


def imap_world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    user = request.getfixturevalue("imap_user")
    uids = user.append_many("INBOX", SAMPLES)
    return World(user.settings(), "INBOX", [Folder("INBOX"), Folder("Sent", sent=True)], uids,
                 add=lambda m: user.append("INBOX", m), remove_last=lambda: user.expunge("INBOX", uids[-1]))


def maildir_world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    root = tmp_path / "Maildir"
    for folder in (root, root / ".Sent"):
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True)
    files: list[Path] = []

    def deliver(data: bytes, when: int) -> int:
        path = root / "new" / f"{when}.M{len(files)}P1.test"
        path.write_bytes(data)
        files.append(path)
        return len(files)

    uids = [deliver(m, 1_700_000_000 + i) for i, m in enumerate(SAMPLES)]
    # the last sample has been read by a mail client: it lives in cur/ with flags
    files[-1] = files[-1].rename(root / "cur" / f"{files[-1].name}:2,S")
    return World(MailboxSettings(name="md", maildir=root), "INBOX", [Folder("INBOX"), Folder("Sent", sent=True)],
                 uids, add=lambda m: deliver(m, int(time.time())), remove_last=lambda: files[-1].unlink())


def mbox_world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    path = tmp_path / "archive.mbox"
    ends: list[int] = []

    def add(data: bytes) -> int:
        with path.open("ab") as f:
            f.write(b"From alice@example.com Mon Jan  1 10:00:00 2024\n" + data + b"\n")
            ends.append(f.tell())
        return len(ends)

    def remove_last() -> None:
        # rewritten in place, as an mbox tool that deletes the last message does
        with path.open("r+b") as f:
            f.truncate(ends[-2])

    uids = [add(m) for m in SAMPLES]
    return World(MailboxSettings(name="mb", mbox=path), "archive", [Folder("archive")], uids,
                 add=add, remove_last=remove_last)


@pytest.fixture(params=[imap_world, maildir_world, mbox_world], ids=["imap", "maildir", "mbox"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    w: World = request.param(request, tmp_path)
    w.stored.update(zip(w.uids, SAMPLES))
    return w


def test_folders(world: World) -> None:
    """folders() lists the configured folders and the sent ones, marked sent."""
    with world.source() as source:
        assert source.folders() == world.folders


def test_select_reports_count_and_stable_uidvalidity(world: World) -> None:
    """select() gives the message count and the same UIDVALIDITY on every connection."""
    with world.source() as source:
        first = source.select(world.folder)
    with world.source() as source:
        again = source.select(world.folder)
    assert (first.name, first.exists) == (world.folder, len(SAMPLES))
    assert first.uidvalidity > 0
    assert again.uidvalidity == first.uidvalidity


def test_select_missing_folder(world: World) -> None:
    """Selecting a folder that does not exist raises FolderError naming it and the existing folders."""
    with world.source() as source, pytest.raises(FolderError) as raised:
        source.select("Nope")
    assert "'Nope'" in str(raised.value)
    assert world.folder in str(raised.value)


def test_uids_after(world: World) -> None:
    """uids_after(n) gives the UIDs above n, ascending, and nothing past the end."""
    with world.source() as source:
        source.select(world.folder)
        assert source.uids_after(0) == world.uids
        assert source.uids_after(world.uids[1]) == world.uids[2:]
        assert source.uids_after(world.uids[-1]) == []
        assert source.uids_after(world.uids[-1] + 100) == []


def test_fetch_gives_stored_bytes_in_uid_order(world: World) -> None:
    """fetch() yields each message once, ascending by UID, byte for byte as stored."""
    with world.source() as source:
        source.select(world.folder)
        got = list(source.fetch([*reversed(world.uids), world.uids[0]]))
    assert [m.uid for m in got] == world.uids
    for m in got:
        assert m.data == world.stored[m.uid]
        assert m.size == len(world.stored[m.uid])
        assert isinstance(m.internaldate, datetime) and m.internaldate.tzinfo is not None


def test_fetch_skips_vanished_uids(world: World) -> None:
    """UIDs that are gone (removed after the search, or never there) are skipped, not errors."""
    with world.source() as source:
        source.select(world.folder)
        uids = source.uids_after(0)
        world.remove_last()
        got = list(source.fetch([*uids, uids[-1] + 1000]))
    assert [m.uid for m in got] == world.uids[:-1]
    assert all(m.data == world.stored[m.uid] for m in got)


def test_fetch_max_size(world: World) -> None:
    """Messages over max_size come back with their size and data=None; the others in full."""
    with world.source() as source:
        source.select(world.folder)
        got = {m.uid: m for m in source.fetch(world.uids, max_size=LARGE)}
    for uid, data in world.stored.items():
        assert got[uid].size == len(data)
        assert got[uid].data == (data if len(data) <= LARGE else None)
    assert [m.data is None for m in got.values()] == [False, True, False, True]


def test_new_mail_gets_higher_uids(world: World) -> None:
    """New mail gets UIDs above the old ones; old UIDs and UIDVALIDITY stay the same."""
    with world.source() as source:
        before = source.select(world.folder)
    new = message(5)
    world.add(new)
    with world.source() as source:
        after = source.select(world.folder)
        assert after.uidvalidity == before.uidvalidity
        assert source.uids_after(0)[:-1] == world.uids
        [uid] = source.uids_after(world.uids[-1])
        fetched = {m.uid: m.data for m in source.fetch([world.uids[0], uid])}
    assert fetched == {world.uids[0]: SAMPLES[0], uid: new}


def test_needs_a_selected_folder(world: World) -> None:
    """uids_after() and fetch() before select() raise SourceError."""
    with world.source() as source:
        with pytest.raises(SourceError):
            source.uids_after(0)
        with pytest.raises(SourceError):
            list(source.fetch(world.uids))
