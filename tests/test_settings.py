"""Secrets read from files follow their files: a running syncd picks up a replaced token without a restart."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path

import pytest
import structlog

from syncd import log
from syncd.settings import Secret

OLD = "1000.old-token-" + "a" * 32
NEW = "1000.new-token-" + "b" * 32  # as long as OLD: only the file's inode or mtime tells them apart


class SyncdLog:
    """syncd's log output while it is open (structlog as JSON, stdlib lines as text; scrubbed as in production).

    Opened inside a test, so syncd's handler replaces pytest's capture, which would show a library's raw line.
    """

    def __enter__(self) -> SyncdLog:
        self._stream = io.StringIO()
        log.configure(stream=self._stream, level=logging.DEBUG, json=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        log.configure(level=logging.INFO)

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def events(self, name: str) -> list[dict]:
        found = [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]
        return [e for e in found if e.get("event") == name]


def replace_atomically(path: Path, value: str) -> None:
    """Write a new file beside ``path`` and rename it over it (what ``mv``, Ansible and most tools do)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


def test_rewritten_in_place_is_read_again(tmp_path: Path):
    """A file rewritten in place (same inode) gives its new value at the next reveal, whitespace stripped."""
    path = tmp_path / "refresh_token"
    path.write_text(OLD + "\n")
    secret = Secret.from_file(path)
    assert secret.reveal() == OLD and secret.path == path
    inode = path.stat().st_ino
    path.write_text(f"  {NEW}-longer\n")
    assert path.stat().st_ino == inode
    assert secret.reveal() == NEW + "-longer"


def test_renamed_over_is_read_again(tmp_path: Path):
    """A new file renamed over the old one (same length, new inode) gives its value."""
    path = tmp_path / "refresh_token"
    path.write_text(OLD)
    secret = Secret.from_file(path)
    replace_atomically(path, NEW)
    assert secret.reveal() == NEW


def test_kubernetes_secret_volume_swap_is_read_again(tmp_path: Path):
    """A Kubernetes secret volume's update (..data symlink swapped to a new timestamped dir) gives the new value."""
    volume = tmp_path / "secrets"
    (volume / "..2026_01_01").mkdir(parents=True)
    (volume / "..2026_01_01" / "refresh_token").write_text(OLD)
    (volume / "..data").symlink_to("..2026_01_01")
    (volume / "refresh_token").symlink_to("..data/refresh_token")
    secret = Secret.from_file(volume / "refresh_token")
    assert secret.reveal() == OLD
    # what the kubelet does: write the new version, point a temporary link at it, rename the link over ..data
    (volume / "..2026_02_01").mkdir()
    (volume / "..2026_02_01" / "refresh_token").write_text(NEW)
    (volume / "..data_tmp").symlink_to("..2026_02_01")
    os.replace(volume / "..data_tmp", volume / "..data")
    (volume / "..2026_01_01" / "refresh_token").unlink()
    (volume / "..2026_01_01").rmdir()
    assert secret.reveal() == NEW


def test_empty_file_keeps_the_last_value_and_warns_once_per_change(tmp_path: Path):
    """An emptied file keeps the old value with one warning naming the path (not the value); the next good value wins."""
    path = tmp_path / "refresh_token"
    path.write_text(OLD)
    secret = Secret.from_file(path)
    with SyncdLog() as logged:
        path.write_text("\n")
        assert [secret.reveal() for _ in range(3)] == [OLD] * 3
        (warning,) = logged.events("secret_file_unusable")
        assert warning["level"] == "warning" and warning["path"] == str(path) and "empty" in warning["reason"]
        replace_atomically(path, NEW)
        assert secret.reveal() == NEW
        path.write_text("")  # emptied again: a new change, a new warning
        assert secret.reveal() == NEW
        assert len(logged.events("secret_file_unusable")) == 2
    assert OLD not in logged.text and NEW not in logged.text


@pytest.mark.parametrize("break_it", ["removed", "a directory", "not UTF-8"])
def test_unreadable_file_keeps_the_last_value(tmp_path: Path, break_it: str):
    """A removed, unreadable or undecodable file keeps the old value (one warning); once fixed, its new value is used."""
    path = tmp_path / "refresh_token"
    path.write_text(OLD)
    secret = Secret.from_file(path)
    path.unlink()
    if break_it == "a directory":
        path.mkdir()
    elif break_it == "not UTF-8":
        path.write_bytes(b"\xff\xfe" + NEW.encode())
    with SyncdLog() as logged:
        assert secret.reveal() == OLD and secret.reveal() == OLD
    (warning,) = logged.events("secret_file_unusable")
    assert warning["path"] == str(path) and NEW not in logged.text
    if path.is_dir():
        path.rmdir()
    replace_atomically(path, NEW)
    assert secret.reveal() == NEW


def test_a_new_value_is_redacted_from_every_log_line(tmp_path: Path):
    """The value read from a replaced file is never printed, by structlog or a library's stdlib logger."""
    path = tmp_path / "client_secret"
    path.write_text(OLD)
    secret = Secret.from_file(path)
    new = "fresh-secret-" + os.urandom(8).hex()
    replace_atomically(path, new)
    with SyncdLog() as logged:
        assert secret.reveal() == new
        logging.getLogger("httpx").warning("sent client_secret=%s", new)
        structlog.get_logger("test").warning("oops", leaked=new)
    assert new not in logged.text and "client_secret=***" in logged.text
    assert logged.events("oops")[0]["leaked"] == "***"
    assert logged.events("secret_file_reloaded")[0]["path"] == str(path)


def test_equality_follows_the_value_and_the_hash_stays(tmp_path: Path):
    """Secrets compare by value (file-backed or not), print as ***, and stay usable as dict keys when the file changes."""
    path = tmp_path / "password"
    path.write_text(OLD)
    secret = Secret.from_file(path)
    assert secret == Secret(OLD) and hash(secret) == hash(Secret(OLD)) and secret != Secret(NEW)
    assert repr(secret) == str(secret) == "Secret('***')"
    by_secret = {secret: "mailbox"}
    replace_atomically(path, NEW)
    assert secret == Secret(NEW) and by_secret[secret] == "mailbox"
    assert bool(secret) and not Secret("")


def test_threads_revealing_during_swaps_see_whole_values(tmp_path: Path):
    """Mailbox threads revealing while the file is swapped again and again always get one of the values, whole."""
    path = tmp_path / "password"
    path.write_text(OLD)
    secret = Secret.from_file(path)
    seen: set[str] = set()
    stop = threading.Event()

    def reveal() -> None:
        while not stop.is_set():
            seen.add(secret.reveal())

    threads = [threading.Thread(target=reveal) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            replace_atomically(path, (OLD, NEW)[i % 2])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen <= {OLD, NEW} and secret.reveal() == NEW
