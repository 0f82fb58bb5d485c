"""The built-in demo: a sample mailbox going into the sandbox CRM, no Zoho account needed.

Used when no configuration file exists at the default places, so that a new user
sees the whole pipeline from one command.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from syncd.sandbox import SandboxServer
from syncd.settings import CrmSettings, LedgerSettings, MailboxSettings, Secret, Settings

SAMPLE_MBOX = Path(str(resources.files("syncd.demo") / "sample.mbox"))

RECORDS = {
    "Contacts": [{"id": "5843104000000424001", "First_Name": "Ana", "Last_Name": "Ruiz",
                  "Full_Name": "Ana Ruiz", "Email": "ana@globex.example"}],
    "Leads": [{"id": "5843104000000425001", "First_Name": "Bob", "Last_Name": "Stone",
               "Full_Name": "Bob Stone", "Email": "Bob@Initech.example"}],
}


def state_dir() -> Path:
    """Where the demo keeps its ledger: ``$XDG_STATE_HOME/syncd`` (``~/.local/state/syncd``)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "syncd"


def settings(server: SandboxServer | None = None) -> Settings:
    """The demo's settings, pointing at ``server`` (without one: for commands that only read the ledger)."""
    url = server.url if server else "http://127.0.0.1:9"
    client_id, client_secret, refresh_token = server.credentials() if server else ("", "", "")
    crm = CrmSettings(
        client_id=client_id, client_secret=Secret(client_secret), refresh_token=Secret(refresh_token),
        api_domain=url, accounts_url=url,
    )
    mailbox = MailboxSettings(name="demo", mbox=SAMPLE_MBOX, addresses=("sales@acme.example",),
                              source_file="(built-in demo)")
    return Settings(crm=crm, ledger=LedgerSettings(state_dir() / "demo-ledger.sqlite3"),
                    mailboxes=(mailbox,), source_file="(built-in demo)", demo=True)


def start() -> tuple[Settings, SandboxServer]:
    """Start the sandbox CRM seeded with the demo's records; settings that point syncd at it."""
    server = SandboxServer()
    server.start()
    for module, records in RECORDS.items():
        server.seed(module, records)
    return settings(server), server
