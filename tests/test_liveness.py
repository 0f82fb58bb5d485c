"""Liveness: a running pass that stops making progress is stalled; idle mailboxes never are."""

from __future__ import annotations

import mailbox
import threading
from pathlib import Path

import pytest

from syncd.liveness import Liveness
from syncd.settings import MailboxSettings
from syncd.source import open_source
from tests.fixtures.wait import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_running_pass_without_progress_is_stalled(clock: Clock):
    """begin() starts the clock, beat() resets it, end() clears it; only a silent running pass is stalled."""
    live = Liveness(clock)
    live.begin("sales")
    live.begin("support")
    clock.now = 10
    live.beat("support")
    assert live.stalled(limit=5) == ["sales"]
    live.end("sales")
    assert live.stalled(limit=5) == []
    clock.now = 16
    assert live.stalled(limit=5) == ["support"]
    assert live.stalled(limit=30) == []


def test_idle_mailbox_is_never_stalled(clock: Clock):
    """A mailbox with no pass in flight is idle, however long ago it last ran."""
    live = Liveness(clock)
    live.end("never-started")
    live.begin("sales")
    live.end("sales")
    clock.now = 10_000
    assert live.stalled(limit=1) == []


def test_watched_source_reports_every_step(tmp_path: Path, clock: Clock):
    """Connect, list, select, search and each fetched message of a real Maildir count as progress."""
    box = mailbox.Maildir(tmp_path / "Maildir")
    for i in range(3):
        box.add(f"From: a@example.com\nSubject: {i}\nMessage-ID: <{i}@example.com>\n\nbody\n".encode())
    live = Liveness(clock)
    open_watched = live.watch(open_source)
    live.begin("arch")

    def step_was_progress() -> bool:
        progressed = live.stalled(limit=5) == []
        clock.now += 10  # every step below must beat again to stay un-stalled
        return progressed

    clock.now += 10
    with open_watched(MailboxSettings(name="arch", maildir=tmp_path / "Maildir")) as source:
        assert step_was_progress()
        folders = source.folders()
        assert step_was_progress()
        source.select(folders[0].name)
        assert step_was_progress()
        uids = source.uids_after(0)
        assert step_was_progress()
        fetched = []
        for message in source.fetch(uids):
            fetched.append(message.uid)
            assert step_was_progress()
    assert len(fetched) == 3
    assert live.stalled(limit=5) == ["arch"]


def test_settle_waits_for_passes_at_work_but_not_for_those_reading_mail():
    """settle() holds while a running pass is outside its mail source, and names the passes left inside one."""
    live = Liveness()
    assert live.settle(timeout=0) == []
    live.begin("sales")
    live.begin("support")
    with live.reading("sales"):
        assert live.settle(timeout=0) is None  # support is at work (CRM or ledger): a stop waits for it
        live.end("support")
        assert live.settle(timeout=0) == ["sales"]
    assert live.settle(timeout=0) is None  # sales has left IMAP and works on what it read


def test_settle_wakes_when_the_last_pass_at_work_ends():
    """A stop blocked in settle() returns as soon as the pass it waits for ends, with no polling delay."""
    live = Liveness()
    live.begin("sales")
    left: list[list[str] | None] = []
    waiter = threading.Thread(target=lambda: left.append(live.settle(timeout=30)))
    waiter.start()
    live.end("sales")
    waiter.join(timeout=30)
    assert left == [[]]


def test_watched_fetch_reads_only_while_waiting_for_the_next_message(tmp_path: Path):
    """Between two fetched messages (the pass's own work on one) the pass is not reading, so a stop waits for it."""
    box = mailbox.Maildir(tmp_path / "Maildir")
    for i in range(2):
        box.add(f"From: a@example.com\nSubject: {i}\nMessage-ID: <{i}@example.com>\n\nbody\n".encode())
    live = Liveness()
    live.begin("arch")
    with live.watch(open_source)(MailboxSettings(name="arch", maildir=tmp_path / "Maildir")) as source:
        source.select(source.folders()[0].name)
        for _ in source.fetch(source.uids_after(0)):
            assert live.settle(timeout=0) is None
    assert live.settle(timeout=0) is None  # the pass itself has not ended
    live.end("arch")
    assert live.settle(timeout=0) == []


def test_settle_gives_passes_in_a_source_call_a_grace_to_end():
    """A pass ending its source call within the grace (a LOGOUT answered) is waited for, not reported as left."""
    live = Liveness()
    live.begin("sales")
    inside = threading.Event()
    leave = threading.Event()

    def logout_then_end() -> None:
        with live.reading("sales"):
            inside.set()
            leave.wait(30)
        live.end("sales")

    def answer_while_settle_waits() -> None:
        # The LOGOUT is answered once settle() waits in its grace (a release before it would prove nothing,
        # and a timer cannot tell when that is): settle() is then a waiter of the Liveness condition.
        wait_until(lambda: live._changed._waiters or settled, "settle() to wait in its grace")  # noqa: SLF001
        leave.set()

    settled: list[list[str] | None] = []
    worker = threading.Thread(target=logout_then_end)
    worker.start()
    inside.wait(30)
    answer = threading.Thread(target=answer_while_settle_waits)
    answer.start()
    settled.append(live.settle(grace=30))
    answer.join(60)
    worker.join(30)
    assert settled == [[]]


def test_settle_leaves_a_pass_still_reading_when_the_grace_is_over():
    """A pass still inside its source call (a hung server) after the grace is returned as left behind."""
    live = Liveness()
    live.begin("sales")
    with live.reading("sales"):
        assert live.settle(grace=0.01) == ["sales"]
