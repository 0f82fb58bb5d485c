"""config/syncd.toml is the commented reference: it parses, and it mentions every key syncd accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from syncd import config

REFERENCE = Path(__file__).resolve().parents[1] / "config" / "syncd.toml"


def test_reference_mentions_every_key():
    """Each key of [crm], [match], [metrics], [ledger] and [[mailbox]] appears in the reference, set or commented."""
    tomllib.loads(REFERENCE.read_text())  # it must stay valid TOML
    text = REFERENCE.read_text()
    mentioned = {*re.findall(r"(?<![\w.])([a-z_]+)\s*=", text), *re.findall(r"^#?\s*\[(?:mailbox\.)?([a-z_]+)\]", text, re.MULTILINE)}
    mentioned |= {key.removesuffix("_file") for key in mentioned}  # a secret's *_file key documents the secret too
    tables = (config._CrmTable, config._MatchTable, config._MetricsTable, config._LedgerTable, config._MailboxTable)  # noqa: SLF001
    missing = sorted({key for table in tables for key in table.model_fields} - mentioned)
    assert missing == []
