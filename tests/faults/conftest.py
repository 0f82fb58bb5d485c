"""Fixtures of the fault tests: a recording sandbox CRM seeded with the corpus's people, and a mailbox to crash over."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Mailbox, RecordingSandbox, seed_people
from tests.fixtures.dovecot import ImapUser

SEED = int(os.environ.get("SYNCD_FAULT_SEED", "1"))
"""Seeds the corpus and every kill; a failure message names it, and SYNCD_FAULT_SEED=N replays that run."""
SOAK = max(1, int(os.environ.get("SYNCD_SOAK", "1")))
"""SYNCD_SOAK=N multiplies the random fault runs by N, for a longer soak."""


@pytest.fixture
def mailbox(imap_user: ImapUser, tmp_path: Path) -> Mailbox:
    """An empty seeded mailbox (``add(n)`` appends corpus mail) on a fresh IMAP user."""
    return Mailbox(imap_user, tmp_path, seed=SEED)


@pytest.fixture
def crm(mailbox: Mailbox) -> Iterator[RecordingSandbox]:
    """A recording sandbox CRM holding the mailbox's correspondents as Contacts and Leads."""
    with RecordingSandbox() as server:
        seed_people(server, mailbox.people)
        yield server
