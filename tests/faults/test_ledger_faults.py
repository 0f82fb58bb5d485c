"""Ledger faults: read-only or full disk under the ledger, a corrupt ledger file, an older ledger restored from backup.

The rule under test: syncd never sends what it cannot record first, says what is wrong and how to fix it,
and once fixed carries on with nothing lost and nothing associated twice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import (
    Mailbox,
    RecordingSandbox,
    assert_exactly_once,
    query,
    reference,
    syncd,
    syncd_command,
)
from tests.fixtures.crm import Hold
from tests.fixtures.wait import wait_until


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs for the ledger alone (mounting needs root or CAP_SYS_ADMIN: skipped where not allowed)."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True, capture_output=True)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; delete the returned file to give them back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def failed_polls(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if '"pass_failed"' in line and "the disk is full" in line)


def crm_calls(crm: RecordingSandbox, since: int) -> list[tuple[str, str]]:
    return crm.arrived[since:]


def assert_no_secrets(text: str, crm: RecordingSandbox, mailbox: Mailbox) -> None:
    for secret in (*crm.credentials()[1:], mailbox.account.password):
        assert secret not in text


def test_read_only_ledger_refuses_to_start_and_sends_nothing(mailbox: Mailbox, crm: RecordingSandbox, disk: Path):
    """With the ledger's filesystem read-only, once and run exit 1 saying so, before any CRM call; writable again, all arrive once."""
    ledger = disk / "ledger.sqlite3"
    config = mailbox.config(crm, ledger=ledger)
    mailbox.add(6)
    assert syncd("once", "-c", str(config)).returncode == 0
    mailbox.add(6)
    remount(disk, "ro")
    before = len(crm.arrived)
    for command in ("once", "run"):
        refused = syncd(command, "-c", str(config))
        assert refused.returncode == 1, refused.stderr[-3000:]
        assert f"ledger {ledger} is read-only" in refused.stderr and "writable" in refused.stderr
        assert "corrupt" not in refused.stderr
        assert_no_secrets(refused.stderr + refused.stdout, crm, mailbox)
    assert crm_calls(crm, before) == []
    remount(disk, "rw")
    assert syncd("once", "-c", str(config)).returncode == 0
    assert_exactly_once(crm, mailbox, config, faults=0, ledger=ledger, note="read-only ledger")


def test_full_disk_mid_pass_stops_sending_and_loses_nothing(mailbox: Mailbox, crm: RecordingSandbox, disk: Path):
    """The ledger's disk fills while a send is in flight: its outcome cannot be recorded, so nothing more is sent; freed, the pass resumes once."""
    ledger = disk / "ledger.sqlite3"
    config = mailbox.config(crm, ledger=ledger, crm_timeout=60)
    mailbox.add(10)
    in_flight = Hold(crm, r"associate_email")  # answered once the disk is full, however long filling it takes
    proc = subprocess.Popen(syncd_command("once", "-c", str(config)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: in_flight.arrived.is_set() or proc.poll() is not None, "the first associate_email")
        filler = fill(disk)
        in_flight.release()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        in_flight.release()
    assert proc.returncode == 1, err[-3000:]
    assert f"ledger {ledger}: the disk is full" in err and "free space" in err
    assert_no_secrets(err, crm, mailbox)
    sent = [a for a in crm.arrived if a[1].endswith("/associate_email")]
    assert len(sent) == 1, "a send after the ledger stopped taking writes"
    # The one send in flight is known to the ledger: claimed (pending) before it left.
    ((mid, state),) = query(ledger, "SELECT message_id, state FROM deliveries")
    assert state == "pending"
    filler.unlink()
    done = syncd("once", "-c", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert query(ledger, "SELECT state FROM deliveries WHERE message_id=?", (mid,)) == [("duplicate",)]
    assert_exactly_once(crm, mailbox, config, faults=1, ledger=ledger, note="disk full mid-pass")


def test_daemon_keeps_going_through_a_full_disk_and_drains_when_freed(mailbox: Mailbox, crm: RecordingSandbox,
                                                                      disk: Path):
    """`syncd run` with a full ledger disk logs the problem each poll and stays up; once space is freed the backlog drains, once."""
    ledger = disk / "ledger.sqlite3"
    config = mailbox.config(crm, ledger=ledger, crm_timeout=60)
    mailbox.add(10)
    expected = sum(reference(mailbox).values())
    in_flight = Hold(crm, r"associate_email")  # answered once the disk is full, however long filling it takes
    log = config.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(syncd_command("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(in_flight.arrived.is_set, "the first associate_email", proc=proc)
        filler = fill(disk)
        in_flight.release()
        wait_until(lambda: failed_polls(log) >= 2, "two polls failing on the full disk")
        assert proc.poll() is None, "the daemon must keep going"
        filler.unlink()
        wait_until(lambda: len(crm.received()) >= expected, "the backlog to drain", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        in_flight.release()
    assert_exactly_once(crm, mailbox, config, faults=1, ledger=ledger, note="daemon through a full disk")


def corrupt_page(ledger: Path) -> None:
    """Scribble over the head of a page in the middle of the ledger, as a bad sector or a torn copy would."""
    data = ledger.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    with ledger.open("r+b") as f:
        f.seek(len(data) // page_size // 2 * page_size)
        f.write(b"\xde\xad\xbe\xef" * 32)


@pytest.mark.parametrize("damage", ["garbage", "bad page"])
def test_corrupt_ledger_refuses_to_start_with_the_fix(damage: str, mailbox: Mailbox, crm: RecordingSandbox):
    """A garbage or page-damaged ledger: once, run and ledger list exit 1 naming the file and the fix, with no CRM call."""
    config = mailbox.config(crm)
    ledger = config.parent / "syncd.sqlite3"
    mailbox.add(12)
    assert syncd("once", "-c", str(config)).returncode == 0
    if damage == "garbage":
        ledger.write_bytes(b"this is not a ledger\n" * 500)
    else:
        corrupt_page(ledger)
    before = len(crm.arrived)
    for command in (["once"], ["run"], ["ledger", "list"]):
        refused = syncd(*command, "-c", str(config))
        assert refused.returncode == 1, (command, refused.stderr[-3000:])
        assert f"ledger {ledger} is corrupt" in refused.stderr, refused.stderr[-3000:]
        assert "restore a backup" in refused.stderr
    assert crm_calls(crm, before) == []


def test_restored_older_ledger_reassociates_nothing_and_heals(mailbox: Mailbox, crm: RecordingSandbox, tmp_path: Path):
    """After restoring an older ledger backup, the rescan's sends all get DUPLICATE_DATA, rows heal to duplicate, a further pass sends nothing."""
    config = mailbox.config(crm)
    ledger = config.parent / "syncd.sqlite3"
    mailbox.add(8)
    assert syncd("once", "-c", str(config)).returncode == 0
    backup = tmp_path / "backup.sqlite3"
    with contextlib.closing(sqlite3.connect(ledger)) as live, contextlib.closing(sqlite3.connect(backup)) as copy:
        live.backup(copy)
    mailbox.add(8)
    assert syncd("once", "-c", str(config)).returncode == 0
    later = {mid for mid, in query(ledger, "SELECT message_id FROM deliveries")} - \
        {mid for mid, in query(backup, "SELECT message_id FROM deliveries")}
    assert later, "the second batch must have made deliveries"
    held = crm.associations()

    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    backup.rename(ledger)
    answered = len(crm.answers)
    done = syncd("once", "-c", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert crm.associations() == held
    resent = crm.answers[answered:]
    assert {a[2] for a in resent} == later
    assert {a[3] for a in resent} == {"DUPLICATE_DATA"}
    healed = query(ledger, f"SELECT DISTINCT state FROM deliveries WHERE message_id IN ({','.join('?' * len(later))})",
                   sorted(later))
    assert healed == [("duplicate",)]

    answered = len(crm.answers)
    assert syncd("once", "-c", str(config)).returncode == 0
    assert crm.answers[answered:] == []
    assert_exactly_once(crm, mailbox, config, faults=len(resent), note="restored an older ledger")
