"""Crash safety: `syncd once` / `syncd run` SIGKILLed at named points and random moments, restarted, until done.

Afterwards the CRM must hold exactly what a fault-free run of the same mail produces: no
loss, no duplicate, no stray. CI runs 24 kills of `syncd once` and 6 of `syncd run`;
``SYNCD_SOAK=N`` multiplies them (``SYNCD_FAULT_KILLS=K`` sets the `once` kills outright) and
``SYNCD_FAULT_SEED=S`` replays a run's corpus and kill plan. ``bench/faults.py`` prints the
same figures for hundreds of kills.
"""

from __future__ import annotations

import os
import random
import secrets
from pathlib import Path

import pytest

from syncd.faultpoints import POINTS
from tests.faults.conftest import SEED, SOAK
from tests.faults.harness import (
    Kill,
    Mailbox,
    RecordingSandbox,
    assert_exactly_once,
    Tally,
    crash_daemon,
    crash_until_done,
    query,
    run_killed,
    syncd,
)
from tests.fixtures.dovecot import Dovecot, ImapUser

KILLS = int(os.environ.get("SYNCD_FAULT_KILLS", 24 * SOAK))
BATCH = 20
"""Messages added per round: small enough that a round takes several kills to finish."""


def assert_no_gaps(config: Path) -> None:
    """`syncd ledger verify` finds every UID behind each checkpoint in the ledger."""
    verify = syncd("ledger", "verify", "-c", str(config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def checkpoints(config: Path) -> dict[str, int]:
    return dict(query(config.parent / "syncd.sqlite3", "SELECT folder, last_uid FROM checkpoints"))


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_point_then_restart_delivers_exactly_once(point: str, mailbox: Mailbox, crm: RecordingSandbox):
    """A SIGKILL at each named crash point, then a restart: every association once, a resend only after 'associated'."""
    mailbox.add(8)
    config = mailbox.config(crm)
    code = run_killed(["once", "-c", str(config)], Kill(point, 2 if point != "checkpoint" else 1),
                      config.with_suffix(".log"))
    assert code == -9, f"the crash point {point}:2 was never crossed"
    before = len(crm.answers)
    done = syncd("once", "-c", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_once(crm, mailbox, config, faults=1, note=f"killed at {point}")
    resent = crm.duplicate_answers()
    assert resent == (1 if point == "associated" else 0), crm.answers
    assert len(crm.answers) > before or point in ("recorded", "checkpoint")


def test_kill_inside_the_checkpoint_write_rolls_it_back_and_nothing_is_resent(mailbox: Mailbox, crm: RecordingSandbox):
    """Killed inside a folder's checkpoint write: the checkpoint stays put, and the rescan that follows sends nothing again."""
    mailbox.add(8)
    config = mailbox.config(crm)
    assert syncd("once", "-c", str(config)).returncode == 0
    settled = checkpoints(config)
    mailbox.add(6)
    code = run_killed(["once", "-c", str(config)], Kill("checkpoint", 1), config.with_suffix(".log"))
    assert code == -9
    assert checkpoints(config) == settled  # the write in flight never committed
    sent_before_restart = list(crm.answers)
    assert syncd("once", "-c", str(config)).returncode == 0
    rescanned = {a[2] for a in crm.answers[len(sent_before_restart):]}
    assert not rescanned & {a[2] for a in sent_before_restart}, "a message behind the rolled-back checkpoint was sent again"
    assert checkpoints(config) != settled
    assert_exactly_once(crm, mailbox, config, faults=1, note="killed inside a checkpoint write")


@pytest.mark.timeout(120 + 3 * KILLS)
def test_random_kills_of_syncd_once_lose_and_duplicate_nothing(mailbox: Mailbox, crm: RecordingSandbox):
    """SYNCD_FAULT_KILLS seeded SIGKILLs of `syncd once` (crash points and timers), restarts until done: exactly once."""
    rng = random.Random(SEED)
    config = mailbox.config(crm)
    tally = Tally()
    # A timer kill lands by the clock: on a slow machine more timers kill (the run is still going), so they
    # take more of the KILLS and fewer crash points get drawn. Rounds go on until every point was hit too
    # (at most 3 * KILLS kills), so that how fast the machine is does not decide whether one was.
    while tally.killed < KILLS or (not set(tally.kills) >= set(POINTS) and tally.killed < 3 * KILLS):
        mailbox.add(BATCH)
        tally.add(crash_until_done(config, rng))
    assert set(tally.kills) >= set(POINTS), f"every crash point must be hit at least once: {tally.line()}"
    assert_exactly_once(crm, mailbox, config, faults=tally.killed, note=tally.line())
    assert_no_gaps(config)


@pytest.mark.timeout(120 + 3 * KILLS)
def test_random_kills_with_the_same_mail_in_two_mailboxes(mailbox: Mailbox, crm: RecordingSandbox, dovecot: Dovecot):
    """Every message also in a second mailbox, both synced in parallel and killed at random: each association still once."""
    colleague = ImapUser(dovecot, f"u{secrets.token_hex(4)}", secrets.token_urlsafe(12))
    dovecot.add_user(colleague.username, colleague.password)
    mailbox.copy = colleague
    rng = random.Random(SEED + 2)
    config = mailbox.config(crm)
    tally = Tally()
    while tally.killed < max(KILLS // 2, 5):
        mailbox.add(BATCH)
        tally.add(crash_until_done(config, rng, deferrals=True))
    # Both mailboxes' passes run at once: a kill can hide one send's outcome in each.
    assert_exactly_once(crm, mailbox, config, faults=2 * tally.killed, note=tally.line())
    assert_no_gaps(config)


@pytest.mark.timeout(120 + 3 * KILLS)
def test_random_kills_of_the_daemon_lose_and_duplicate_nothing(mailbox: Mailbox, crm: RecordingSandbox):
    """`syncd run` SIGKILLed at seeded random moments while mail keeps arriving; a final pass finishes: exactly once."""
    rng = random.Random(SEED + 1)
    config = mailbox.config(crm)
    tally = Tally()
    while tally.killed < max(KILLS // 4, 5):
        mailbox.add(BATCH)
        tally.add(crash_daemon(config, rng, kills=3))
    done = syncd("once", "-c", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    tally.runs += 1
    assert_exactly_once(crm, mailbox, config, faults=tally.killed, note=tally.line())
    assert_no_gaps(config)
