"""Shutdown: real signals to `syncd once` and `syncd run` while a message is in flight (its CRM answer held back).

First SIGTERM/SIGINT: the message in flight is finished and recorded, no new one is started, exit 0.
Second: exit at once (128 + signal); the send it cut short is caught as DUPLICATE_DATA on the next pass.
"""

from __future__ import annotations

import signal
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from bench.corpus import OWN
from tests.faults.harness import Mailbox, RecordingSandbox, query, syncd, syncd_command
from tests.fixtures.crm import Hold
from tests.fixtures.wait import wait_until


def plain(i: int, sender: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, OWN, f"Order {i}"
    m["Date"], m["Message-ID"] = "Tue, 03 Nov 2026 10:15:00 +0100", f"<stop-{i}@test.example>"
    m.set_content(f"Message {i}.")
    return bytes(m)


def start_held(command: str, mailbox: Mailbox, crm: RecordingSandbox) -> tuple[subprocess.Popen, Path, Hold]:
    """Three mails from one Contact; start ``syncd COMMAND`` and return once its first associate_email is held
    (unanswered until the test releases it: the signals arrive while it is in flight, however slow the machine)."""
    mailbox.account.append_many("INBOX", [plain(i, mailbox.people[0][1]) for i in range(3)])
    held = Hold(crm, r"associate_email")
    config = mailbox.config(crm, crm_timeout=120)
    log = config.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(syncd_command(command, "-c", str(config)), stdout=subprocess.DEVNULL, stderr=err)
    wait_until(lambda: held.arrived.is_set() or proc.poll() is not None, "the first associate_email to arrive")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, config, held


def associate_calls(crm: RecordingSandbox) -> int:
    return sum(1 for _, path in crm.arrived if path.endswith("/associate_email"))


def states(config: Path) -> dict[str, str]:
    return dict(query(config.parent / "syncd.sqlite3", "SELECT message_id, state FROM messages"))


def stop(proc: subprocess.Popen, signum: int, log: Path) -> None:
    """Send ``signum`` and wait until syncd has logged that it took it (signals must not coalesce)."""
    proc.send_signal(signum)
    wait_until(lambda: b'"shutdown_requested"' in log.read_bytes() or proc.poll() is not None, "syncd to take the signal")


@pytest.mark.parametrize(("command", "signum"), [("once", signal.SIGTERM), ("run", signal.SIGTERM), ("run", signal.SIGINT)])
def test_first_signal_finishes_the_message_in_flight_then_exits_0(command: str, signum: int, mailbox: Mailbox,
                                                                   crm: RecordingSandbox):
    """One signal mid-send: that message is associated and recorded done, no further one is started, exit code 0."""
    proc, config, held = start_held(command, mailbox, crm)
    try:
        stop(proc, signum, config.with_suffix(".log"))
        held.release()
        assert proc.wait(timeout=60) == 0, config.with_suffix(".log").read_text()[-3000:]
    finally:
        proc.kill()
    assert [e.original_message_id for e in crm.received()] == ["stop-0@test.example"]
    assert associate_calls(crm) == 1
    assert states(config) == {"stop-0@test.example": "done"}

    finish = syncd("once", "-c", str(config))
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert sorted(e.original_message_id for e in crm.received()) == [f"stop-{i}@test.example" for i in range(3)]
    assert crm.duplicate_answers() == 0


@pytest.mark.parametrize("command", ["once", "run"])
def test_second_signal_exits_at_once_and_the_cut_send_is_not_duplicated(command: str, mailbox: Mailbox,
                                                                        crm: RecordingSandbox):
    """A second SIGTERM exits 143 before the send in flight is answered; the next pass resends it and gets DUPLICATE_DATA."""
    proc, config, held = start_held(command, mailbox, crm)
    try:
        stop(proc, signal.SIGTERM, config.with_suffix(".log"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert crm.received() == [], "exited only after the held answer: not 'at once'"
    finally:
        proc.kill()
        held.release()
    assert states(config) == {}
    wait_until(crm.received, "the held send to land in the CRM after syncd is gone")

    finish = syncd("once", "-c", str(config))
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert sorted(e.original_message_id for e in crm.received()) == [f"stop-{i}@test.example" for i in range(3)]
    assert crm.duplicate_answers() == 1
    assert states(config)["stop-0@test.example"] == "duplicate"
