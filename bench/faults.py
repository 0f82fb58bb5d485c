"""Crash soak: hundreds of SIGKILLs of `syncd once` and `syncd run`, then the CRM checked for losses and duplicates.

    .venv/bin/python -m bench.faults [--kills 300] [--daemon-kills 60] [--batch 20] [--seed N]

Uses the crash harness of the fault tests (``tests/faults/harness.py``) against a real
Dovecot and the sandbox CRM: mail arrives in batches, each batch is synced by runs killed
at seeded random moments (crash points and timers) until one finishes; then the daemon is
killed the same way while more mail arrives. Prints kills by point, losses, duplicates,
strays and the resends Zoho answered DUPLICATE_DATA; exits 1 if any loss, duplicate or
stray was found. ``--seed`` replays a run's kill plan.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import time

from tests.faults.harness import (
    Mailbox,
    RecordingSandbox,
    Tally,
    crash_daemon,
    crash_until_done,
    judge,
    seed_people,
    syncd,
    unfinished,
)
from tests.fixtures.dovecot import ImapUser, running


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=300, help="kills of `syncd once`")
    parser.add_argument("--daemon-kills", type=int, default=60, help="kills of `syncd run`")
    parser.add_argument("--batch", type=int, default=20, help="messages added per round")
    parser.add_argument("--seed", type=int, default=None, help="replay this run's corpus and kill plan")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    print(f"seed {seed}", flush=True)

    with running("dc") as server:
        user = ImapUser(server, f"faults{secrets.token_hex(3)}", secrets.token_urlsafe(12))
        server.add_user(user.username, user.password)
        mailbox = Mailbox(user, server.root / "work", seed=seed)
        with RecordingSandbox() as crm:
            seed_people(crm, mailbox.people)
            config = mailbox.config(crm)
            once, daemon = Tally(), Tally()
            rng = random.Random(seed)
            t0 = time.perf_counter()
            while once.killed < args.kills:
                mailbox.add(args.batch)
                once.add(crash_until_done(config, rng))
                print(f"  once: {once.line()}, {mailbox.count} messages", flush=True)
            t1 = time.perf_counter()
            while daemon.killed < args.daemon_kills:
                mailbox.add(args.batch)
                daemon.add(crash_daemon(config, rng, kills=5))
                print(f"  run: {daemon.line()}, {mailbox.count} messages", flush=True)
            final = syncd("once", "-c", str(config))
            t2 = time.perf_counter()
            verdict = judge(crm, mailbox)
            left = unfinished(config.parent / "syncd.sqlite3")
            violations = len(crm.violations)

    print(f"syncd once: {once.line()}, {t1 - t0:.0f}s")
    print(f"syncd run:  {daemon.line()}, {t2 - t1:.0f}s")
    print(f"messages {mailbox.count}; final pass exit {final.returncode}")
    print(verdict.line())
    print(f"ledger rows not final: {len(left)}; spec violations: {violations}")
    kills = once.killed + daemon.killed
    print(f"SUMMARY kills {kills} / duplicates {len(verdict.duplicates)} / losses {len(verdict.losses)} "
          f"/ strays {len(verdict.strays)} / DUPLICATE_DATA resends {verdict.duplicate_answers} (<= kills: "
          f"{verdict.duplicate_answers <= kills})")
    bad = verdict.losses or verdict.duplicates or verdict.strays or left or final.returncode
    sys.exit(1 if bad or verdict.duplicate_answers > kills else 0)


if __name__ == "__main__":
    main()
