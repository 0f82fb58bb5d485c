"""Benchmark: one `syncd once` pass over a mailbox of N mixed messages in a real Dovecot, into the sandbox CRM.

    .venv/bin/python -m bench.sync_mailbox [--messages 1000] [--people 50] [--lookup batch|cache|none] [--deals 3]

Prints wall time, messages/s, the CRM calls made (by endpoint), the calls per associated
message and peak memory. ``--lookup`` picks how records are found: ``batch`` (the default:
address cache and batched COQL queries), ``cache`` (cache, one search per address and module),
``none`` (one search per address, module and message: lookup economy's "before").
``--deals N`` gives every Contact N deals (open and closed stages, varied Modified_Time) and
prints how many emails were linked to a predicted deal and what the prediction cost.
"""

from __future__ import annotations

import argparse
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.corpus import OWN, corpus
from syncd import log
from syncd.app import App
from syncd.sandbox import SandboxServer
from syncd.settings import CrmSettings, LedgerSettings, MatchSettings, Secret, Settings
from tests.fixtures.dovecot import Dovecot, ImapUser


LOOKUPS = {
    "batch": MatchSettings(),
    "cache": MatchSettings(batch_lookups=False),
    "none": MatchSettings(cache_ttl=0, batch_lookups=False),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--lookup", choices=sorted(LOOKUPS), default="batch",
                        help="batch: cache + COQL; cache: cache + search; none: a search per address and message")
    parser.add_argument("--deals", type=int, default=0, metavar="N", help="deals per Contact (deal prediction's cost)")
    args = parser.parse_args()
    log.configure(stream=open("/dev/null", "w"), json=True)

    match = LOOKUPS[args.lookup]
    root = Path(tempfile.mkdtemp(prefix="dc", dir="/tmp"))
    root.chmod(0o755)
    server = Dovecot(root)
    server.start()
    try:
        user = ImapUser(server, f"bench{secrets.token_hex(3)}", secrets.token_urlsafe(12))
        server.add_user(user.username, user.password)
        messages, people = corpus(args.messages, people=args.people)
        t0 = time.perf_counter()
        user.append_many("INBOX", messages)
        print(f"appended {len(messages)} messages ({sum(map(len, messages)) / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f}s")
        with SandboxServer() as crm:
            half = len(people) // 2
            contacts = crm.seed("Contacts", [{"Last_Name": n, "Full_Name": n, "Email": a} for n, a in people[:half]])
            crm.seed("Deals", deals_for(contacts, args.deals))
            crm.seed("Leads", [{"Last_Name": n, "Full_Name": n, "Email": a} for n, a in people[half:]])
            cid, secret, refresh = crm.credentials()
            settings = Settings(
                crm=CrmSettings(client_id=cid, client_secret=Secret(secret), refresh_token=Secret(refresh),
                                api_domain=crm.url, accounts_url=crm.url),
                ledger=LedgerSettings(root / "ledger.sqlite3"),
                mailboxes=(user.settings(addresses=(OWN,), match=match),),
            )
            app = App(settings)
            t0 = time.perf_counter()
            (report,) = app.once()
            wall = time.perf_counter() - t0
            calls = Counter(app.crm.calls)
            t0 = time.perf_counter()
            (again,) = app.once()
            second = time.perf_counter() - t0
            app.close()
            violations = len(crm.violations)
            received = len(crm.received())
            linked = sum(1 for e in crm.received() if e.linked_record)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    n = args.messages
    print(f"first pass: {wall:.2f}s wall, {n / wall:.0f} messages/s, states {dict(report.states)}")
    print(f"CRM calls: {sum(calls.values())} total, {dict(sorted(calls.items()))}")
    associated = report.states.get("done", 0)
    if associated:
        lookups = sum(calls.get(k, 0) for k in ("search", "coql", "fields"))
        deliveries = received / associated
        print(f"CRM calls per associated message: {sum(calls.values()) / associated:.2f} "
              f"(record lookups {lookups}: {lookups / associated:.3f} per message; "
              f"{deliveries:.2f} associations per message)")
    print(f"associations received by the CRM: {received}; spec violations: {violations}")
    if args.deals:
        cost = sum(calls.get(k, 0) for k in ("deals", "modules")) + 1  # + the Deals Stage metadata read
        print(f"deal prediction: {linked} emails linked to a deal, {cost} CRM reads for it")
    print(f"second pass (nothing new): {second:.2f}s, states {dict(again.states) or 'none'}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    sys.exit(0 if report.complete else 1)


def deals_for(contacts: list[str], per_contact: int) -> list[dict]:
    """``per_contact`` deals for each Contact, cycling through open and closed stages and months."""
    stages = ("Qualification", "Closed Won", "Negotiation/Review", "Closed Lost")
    return [{"Deal_Name": f"Deal {i} of {contact}", "Stage": stages[i % len(stages)],
             "Modified_Time": f"2024-{1 + (i * 5 + j) % 12:02d}-01T00:00:00+00:00", "Contact_Name": {"id": contact}}
            for j, contact in enumerate(contacts) for i in range(per_contact)]


if __name__ == "__main__":
    main()
