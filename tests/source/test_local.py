"""Maildir and mbox specifics: what a mail client or archiver may do to the files while we read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.errors import SourceError
from syncd.settings import MailboxSettings
from syncd.source import Folder
from syncd.source.maildir import MaildirSource, MboxSource
from tests.source.test_contract import message


def make_maildir(root: Path, *subfolders: str) -> Path:
    for folder in (root, *(root / f".{name}" for name in subfolders)):
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True)
    return root


def test_maildir_message_moved_by_mail_client(tmp_path: Path) -> None:
    """A message moved from new/ to cur/ (and flagged) after select is still fetched, unchanged."""
    root = make_maildir(tmp_path / "md")
    path = root / "new" / "1700000000.M1P1.host"
    path.write_bytes(message(1))
    with MaildirSource(MailboxSettings(name="md", maildir=root)) as source:
        source.select("INBOX")
        path.rename(root / "cur" / f"{path.name}:2,S")
        assert [m.data for m in source.fetch([1])] == [message(1)]


def test_maildir_orders_by_delivery_time(tmp_path: Path) -> None:
    """UIDs follow the delivery time in the key, not the key's spelling; other names use the mtime."""
    root = make_maildir(tmp_path / "md")
    (root / "new" / "999999999.M1P1.host").write_bytes(message(1))
    (root / "new" / "1000000000.M1P1.host").write_bytes(message(2))
    with MaildirSource(MailboxSettings(name="md", maildir=root)) as source:
        source.select("INBOX")
        assert [m.data for m in source.fetch([1, 2])] == [message(1), message(2)]


def test_maildir_folders(tmp_path: Path) -> None:
    """Configured Maildir++ subfolders are received; no .Sent means no sent folder."""
    root = make_maildir(tmp_path / "md", "Work")
    with MaildirSource(MailboxSettings(name="md", maildir=root, folders=("INBOX", "Work"))) as source:
        assert source.folders() == [Folder("INBOX"), Folder("Work")]
        assert source.select("Work").exists == 0


def test_missing_maildir(tmp_path: Path) -> None:
    """A maildir path that does not exist is a SourceError naming it."""
    with pytest.raises(SourceError, match="nowhere"):
        MaildirSource(MailboxSettings(name="md", maildir=tmp_path / "nowhere")).__enter__()


def test_mbox_replaced_after_select(tmp_path: Path) -> None:
    """An mbox file replaced after select is a SourceError; selecting again gives a new UIDVALIDITY."""
    path = tmp_path / "old.mbox"
    path.write_bytes(b"From a Mon Jan  1 10:00:00 2024\n" + message(1) + b"\n")
    with MboxSource(MailboxSettings(name="mb", mbox=path, sent_folders=("old",))) as source:
        assert source.folders() == [Folder("old", sent=True)]
        before = source.select("old")
        replacement = tmp_path / "new.mbox"
        replacement.write_bytes(path.read_bytes())
        replacement.replace(path)
        with pytest.raises(SourceError, match="replaced"):
            list(source.fetch([1]))
        assert source.select("old").uidvalidity != before.uidvalidity


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_unreadable_maildir_folder_is_a_source_error(tmp_path: Path) -> None:
    """A Maildir folder syncd may not read gives a SourceError naming it, not a crash of the pass."""
    root = tmp_path / "m"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    tmp_path.chmod(0o755)
    root.chmod(0o700)  # owned by root: nobody cannot look inside
    code = (
        "from pathlib import Path; from syncd.settings import MailboxSettings; "
        "from syncd.source.maildir import MaildirSource; from syncd.errors import SourceError\n"
        f"s = MaildirSource(MailboxSettings(name='m', maildir=Path({str(root)!r})))\n"
        "try:\n    s.__enter__(); s.select('INBOX')\nexcept SourceError as e:\n    print('SourceError:', e)\n"
    )
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.stdout.startswith("SourceError: mailbox 'm': cannot"), done.stdout + done.stderr
