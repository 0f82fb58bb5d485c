"""Local mail sources: a Maildir (the demo's sample mailbox) and an mbox file (archive imports).

Both are read-only (files are only ever opened for reading) and give out UIDs the
way IMAP does, ascending with new mail, so the same checkpointing works:

- Maildir: a folder's UIDs number its messages 1, 2, ... in order of (delivery time
  from the file name's leading timestamp, or the file's mtime, then the unique key).
  New deliveries get the next UIDs; removing a message renumbers the ones after it,
  so treat an imported Maildir as append-only. UIDVALIDITY is a hash of the folder's path.
- mbox: UID = the message's 1-based position in the file; UIDVALIDITY comes from the
  file's inode, so a rewritten (replaced) file starts a new UID epoch. Lines quoted as
  ``>From`` are handed out as stored.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import BinaryIO

from syncd.errors import FolderError, SourceError
from syncd.settings import MailboxSettings
from syncd.source import Folder, RawMessage, Selected
from syncd.source._common import folder_list

INBOX = "INBOX"
SENT = "Sent"
DRAFTS = "Drafts"
"""Maildir++ has no SPECIAL-USE: the folder clients (and Dovecot) name Drafts is the drafts folder."""


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where one message lives: a Maildir file, or a byte range of an mbox file."""

    path: Path
    size: int
    internaldate: datetime | None
    offset: int = 0


class _LocalSource:
    """The Protocol's behaviour over an index built when a folder is selected."""

    def __init__(self, settings: MailboxSettings, path: Path):
        self.settings = settings
        self.path = path
        self._index: dict[int, _Entry] | None = None

    def __enter__(self) -> _LocalSource:
        try:
            found = self.path.exists()
        except PermissionError as e:
            raise SourceError(f"mailbox {self.settings.name!r}: cannot reach {self.path}: {e}") from e
        if not found:
            raise SourceError(f"mailbox {self.settings.name!r}: {self.path} does not exist")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._index = None

    def select(self, folder: str) -> Selected:
        self._index = None
        try:
            entries, uidvalidity = self._scan(folder)
        except PermissionError as e:
            # Path.is_dir() and glob() raise EACCES rather than answer False
            raise SourceError(f"mailbox {self.settings.name!r}: cannot read folder {folder!r}: {e}; "
                              "make it readable by the user syncd runs as") from e
        self._index = dict(enumerate(entries, start=1))
        return Selected(folder, uidvalidity, len(entries))

    def uids_after(self, last_uid: int) -> list[int]:
        return [uid for uid in self._selected() if uid > last_uid]

    def uids_since(self, day: date) -> list[int]:
        return [uid for uid, e in self._selected().items() if e.internaldate is None or e.internaldate.date() >= day]

    def fetch(self, uids: Sequence[int], *, max_size: int | None = None) -> Iterator[RawMessage]:
        index = self._selected()
        for uid in sorted(set(uids)):
            entry = index.get(uid)
            if entry is None:
                continue
            if max_size is not None and entry.size > max_size:
                yield RawMessage(uid, entry.size, entry.internaldate, None)
                continue
            data = self._read(entry)
            if data is not None:
                yield RawMessage(uid, entry.size, entry.internaldate, data, _maildir_flags(entry.path.name))

    def _selected(self) -> dict[int, _Entry]:
        if self._index is None:
            raise SourceError(f"mailbox {self.settings.name!r}: no folder selected")
        return self._index

    def _missing(self, folder: str, existing: list[str]) -> FolderError:
        return FolderError(
            f"mailbox {self.settings.name!r}: folder {folder!r} does not exist in {self.path}; "
            f"existing folders: {', '.join(existing)}"
        )

    def _scan(self, folder: str) -> tuple[list[_Entry], int]:
        raise NotImplementedError

    def _read(self, entry: _Entry) -> bytes | None:
        """The entry's bytes, or None when the message has gone since the folder was selected."""
        try:
            with entry.path.open("rb") as f:
                f.seek(entry.offset)
                return f.read(entry.size)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SourceError(f"mailbox {self.settings.name!r}: cannot read {entry.path}: {e}") from e


class MaildirSource(_LocalSource):
    """A local Maildir++: ``INBOX`` is the top directory, folder ``X`` the subdirectory ``.X``."""

    def __init__(self, settings: MailboxSettings):
        assert settings.maildir is not None
        super().__init__(settings, settings.maildir)

    def folders(self) -> list[Folder]:
        sent = self.settings.sent_folders
        if sent is None:
            sent = (SENT,) if _is_maildir(self._dir(SENT)) else ()
        return [replace(f, drafts=f.name == DRAFTS) for f in folder_list(self.settings.folders, sent)]

    def _dir(self, folder: str) -> Path:
        return self.path if folder == INBOX else self.path / f".{folder}"

    def _existing(self) -> list[str]:
        subfolders = [p.name[1:] for p in self.path.glob(".?*") if _is_maildir(p)]
        return [INBOX, *sorted(subfolders)]

    def _scan(self, folder: str) -> tuple[list[_Entry], int]:
        directory = self._dir(folder)
        if not _is_maildir(directory):
            raise self._missing(folder, self._existing())
        found: list[tuple[float, str, _Entry]] = []
        try:
            for sub in ("new", "cur"):
                for item in os.scandir(directory / sub):
                    if item.name.startswith(".") or not item.is_file():
                        continue
                    key = item.name.split(":", 1)[0]
                    stat = item.stat()
                    delivered = _delivery_time(key, stat.st_mtime)
                    date = datetime.fromtimestamp(delivered, timezone.utc)
                    found.append((delivered, key, _Entry(Path(item.path), stat.st_size, date)))
        except OSError as e:
            raise SourceError(f"mailbox {self.settings.name!r}: cannot list {directory}: {e}") from e
        found.sort(key=lambda t: (t[0], t[1]))
        uidvalidity = zlib.crc32(str(directory.resolve()).encode()) or 1
        return [entry for _, _, entry in found], uidvalidity

    def _read(self, entry: _Entry) -> bytes | None:
        data = super()._read(entry)
        if data is None:
            # a mail client moved it (new/ -> cur/) or changed its flags (renamed ":2,...")
            moved = _find_key(entry.path.parent.parent, entry.path.name.split(":", 1)[0])
            data = None if moved is None else super()._read(_Entry(moved, entry.size, entry.internaldate))
        return data


class MboxSource(_LocalSource):
    """A local mbox file: one folder, named after the file without its extension."""

    def __init__(self, settings: MailboxSettings):
        assert settings.mbox is not None
        super().__init__(settings, settings.mbox)
        self.name = settings.mbox.stem
        self._stamp: tuple[int, int, int] | None = None

    def folders(self) -> list[Folder]:
        return [Folder(self.name, sent=self.name in (self.settings.sent_folders or ()))]

    def fetch(self, uids: Sequence[int], *, max_size: int | None = None) -> Iterator[RawMessage]:
        self._selected()
        self._refresh()
        return super().fetch(uids, max_size=max_size)

    def _refresh(self) -> None:
        """Re-index if the file changed since select; a replaced file means a new UIDVALIDITY."""
        stamp = self._stat()
        if stamp == self._stamp:
            return
        if self._stamp is None or stamp[0] != self._stamp[0]:
            raise SourceError(
                f"mailbox {self.settings.name!r}: {self.path} was replaced since it was selected; select it again"
            )
        self.select(self.name)

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except OSError as e:
            raise SourceError(f"mailbox {self.settings.name!r}: cannot read {self.path}: {e}") from e
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _scan(self, folder: str) -> tuple[list[_Entry], int]:
        if folder != self.name:
            raise self._missing(folder, [self.name])
        self._stamp = self._stat()
        try:
            with self.path.open("rb") as f:
                entries = list(_mbox_entries(self.path, f))
        except OSError as e:
            raise SourceError(f"mailbox {self.settings.name!r}: cannot read {self.path}: {e}") from e
        return entries, self._stamp[0] % 0xFFFFFFFF + 1


def _maildir_flags(name: str) -> tuple[bytes, ...]:
    """IMAP flags from a Maildir file name's ``:2,`` info (only D, draft, matters to syncd); mbox has none."""
    info = name.partition(":2,")[2]
    return (b"\\Draft",) if "D" in info else ()


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _delivery_time(key: str, mtime: float) -> float:
    """The delivery time a Maildir key starts with ("1700000000.M1P2.host"), else the file's mtime."""
    head = key.split(".", 1)[0]
    return float(head) if head.isdigit() else mtime


def _find_key(directory: Path, key: str) -> Path | None:
    for sub in ("cur", "new"):
        for path in (directory / sub).glob(f"{key}*"):
            if path.name.split(":", 1)[0] == key:
                return path
    return None


def _mbox_entries(path: Path, f: BinaryIO) -> Iterator[_Entry]:
    """Byte ranges of the messages: each starts after a "From " line at the top or after a blank line.

    The blank line before the next "From " line (or the end) separates, it is not part of the message.
    """
    start: int | None = None
    date: datetime | None = None
    separator = 0  # length of the line just read if it was blank, else 0
    position = 0
    for line in iter(f.readline, b""):
        if line.startswith(b"From ") and (position == 0 or separator):
            if start is not None:
                yield _Entry(path, position - separator - start, date, start)
            start, date = position + len(line), _from_line_date(line)
        separator = len(line) if line in (b"\n", b"\r\n") else 0
        position += len(line)
    if start is not None:
        yield _Entry(path, position - separator - start, date, start)


def _from_line_date(line: bytes) -> datetime | None:
    """The date of a "From sender Sat Jan  3 01:05:34 1996" line, read as UTC."""
    words = line.decode("ascii", "replace").split()[2:7]
    try:
        return datetime.strptime(" ".join(words), "%a %b %d %H:%M:%S %Y").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
