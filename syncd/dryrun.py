"""`syncd once --dry-run`: the real pass, with the CRM's writes printed instead of made and a throw-away ledger.

Everything a pass reads still happens — IMAP, the token, record lookups, a Contact's deals,
the owner lookup — so the printout is what a real pass would do now. What would change
anything does not: ZFS uploads and associate_email are printed (and answered with stand-in
ids), and the pass runs on a snapshot of the ledger in a temporary directory (SQLite's
backup API over a read-only connection), deleted afterwards. So a message the ledger already
has is reported as a real pass would (nothing to send), and the real ledger is never written.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from syncd.crm import Associated, Crm, Record, Upload
from syncd.crm.zoho import ZohoCrm
from syncd.errors import LedgerError
from syncd.settings import LedgerSettings, Settings

PREVIEW = 300
"""Characters of each email's content printed."""
_INLINE_ID = re.compile(r"crm/img_id:([\w-]+)")


class DryRun:
    """``settings`` point at a snapshot of the ledger; ``crm`` reads for real and prints its writes."""

    def __init__(self, settings: Settings):
        self._dir = Path(tempfile.mkdtemp(prefix="syncd-dry-run-"))
        copy = self._dir / "ledger.sqlite3"
        _snapshot(settings.ledger.path, copy)
        self.settings = replace(settings, ledger=LedgerSettings(copy))
        self.crm = PrintingCrm(ZohoCrm(settings.crm))
        click.echo(f"dry run: nothing is written to the CRM or to {settings.ledger.path}")

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _snapshot(source: Path, target: Path) -> None:
    """Copy the ledger without writing to it; a missing ledger gives an empty one."""
    if not source.exists():
        return
    try:
        reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        writer = sqlite3.connect(target)
        try:
            reader.backup(writer)
        finally:
            writer.close()
            reader.close()
    except sqlite3.Error as exc:
        raise LedgerError(f"dry run: cannot read the ledger {source}: {exc}") from None


class PrintingCrm:
    """A ``Crm`` whose reads go to Zoho and whose writes are printed; thread-safe (one line block at a time)."""

    def __init__(self, crm: Crm):
        self._crm = crm
        self._lock = threading.Lock()
        self._files: dict[str, str] = {}
        self._names: dict[tuple[str, str], str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._crm, name)

    def search_by_email(self, module: str, address: str) -> list[Record]:
        return self._named(self._crm.search_by_email(module, address))

    def find_by_emails(self, module: str, addresses: Sequence[str]) -> list[Record]:
        return self._named(self._crm.find_by_emails(module, addresses))  # type: ignore[attr-defined]

    def _named(self, records: list[Record]) -> list[Record]:
        with self._lock:
            self._names.update(((r.module, r.id), r.name) for r in records)
        return records

    def upload_files(self, files: Sequence[Upload], *, inline: bool = False) -> list[str]:
        ids = []
        with self._lock:
            for f in files:
                file_id = f"dry-run-{len(self._files) + 1}"
                self._files[file_id] = f"{f.filename} ({len(f.data):,} bytes{', inline' if inline else ''})"
                ids.append(file_id)
        return ids

    def associate_email(self, module: str, record_id: str, email: Mapping[str, Any]) -> Associated:
        with self._lock:
            click.echo(self._describe(module, record_id, email))
        return Associated(None)

    def _describe(self, module: str, record_id: str, email: Mapping[str, Any]) -> str:
        name = self._names.get((module, record_id))
        deal = email.get("linked_record")
        target = f"{module}/{record_id}" + (f" ({name})" if name else "")
        target += f", deal {deal['id']} ({deal.get('name', '')})" if deal else ", no deal"
        shown = dict(email)
        content = str(shown.pop("content", ""))
        if email.get("attachments"):
            shown["attachments"] = [self._files.get(a["id"], a["id"]) for a in email["attachments"]]
        inline = [self._files.get(i, i) for i in _INLINE_ID.findall(content)]
        if inline:
            shown["inline_images"] = inline
        preview = content[:PREVIEW] + ("…" if len(content) > PREVIEW else "")
        return (f"would associate {email.get('original_message_id')} with {target}:\n"
                f"  {json.dumps(shown, ensure_ascii=False)}\n"
                f"  content ({len(content):,} characters): {json.dumps(preview, ensure_ascii=False)}")
