"""The ledger in one SQLite file: WAL, ``synchronous=FULL``, mode 0600, versioned schema.

One connection serves every thread behind a lock: writes are tiny and must be
serialised anyway, and it keeps claim's read-then-write atomic.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from syncd import faultpoints
from syncd.errors import LedgerError
from syncd.ledger import (
    FINAL,
    Checkpoint,
    Claim,
    DealLink,
    DeliveryKey,
    DeliveryRow,
    Linkable,
    MessageKey,
    MessageRow,
    PollRow,
    State,
    placeholder_id,
)
from syncd.ledger.lock import hold_mailbox

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    mailbox TEXT NOT NULL, folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL, last_uid INTEGER NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder));
CREATE TABLE IF NOT EXISTS messages (
    mailbox TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL,
    message_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '', sender TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0, retry_at TEXT, updated TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, uidvalidity, uid));
CREATE INDEX IF NOT EXISTS messages_by_id ON messages (message_id);
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state, mailbox);
CREATE TABLE IF NOT EXISTS deliveries (
    message_id TEXT NOT NULL, module TEXT NOT NULL, record_id TEXT NOT NULL,
    state TEXT NOT NULL, zoho_message_id TEXT, reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0, mailbox TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (message_id, module, record_id));
"""
"""The version-1 schema; later versions are reached through ``_MIGRATIONS``, new files included."""

_MIGRATIONS: dict[int, str] = {
    # 2: the deal each delivered email is linked to, and every change of that link (prediction,
    # `syncd link`, `syncd unlink`), so `ledger show` can tell who linked what and when.
    2: """
ALTER TABLE deliveries ADD COLUMN deal_id TEXT;
ALTER TABLE deliveries ADD COLUMN deal_name TEXT NOT NULL DEFAULT '';
CREATE TABLE deal_links (
    message_id TEXT NOT NULL, module TEXT NOT NULL, record_id TEXT NOT NULL,
    action TEXT NOT NULL, deal_id TEXT, deal_name TEXT NOT NULL DEFAULT '', at TEXT NOT NULL);
CREATE INDEX deal_links_by_id ON deal_links (message_id);
""",
    # 3: when each mailbox was last polled, and its last error, for `syncd status`.
    3: """
CREATE TABLE polls (
    mailbox TEXT PRIMARY KEY, last_poll TEXT NOT NULL, last_success TEXT,
    last_error TEXT NOT NULL DEFAULT '', error_kind TEXT NOT NULL DEFAULT '', error_at TEXT);
""",
    # 4: the addresses unmatched messages wait for, and when each was last asked about (retroactive association).
    4: """
CREATE TABLE unmatched (
    mailbox TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL,
    address TEXT NOT NULL, seen TEXT NOT NULL, checked TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, uidvalidity, uid, address));
CREATE INDEX unmatched_by_address ON unmatched (mailbox, address);
""",
}
"""SQL that upgrades a ledger from version N-1 to N; each runs in one transaction with its version bump."""


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a ledger at ``version`` up to SCHEMA_VERSION, one step per transaction."""
    for target in range(version + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _MIGRATIONS[target].split(";")):
                db.execute(statement)
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(target),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(moment: datetime) -> str:
    """A datetime in the ledger's text form (UTC, seconds), so stored times compare as strings."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


LOW_SPACE = 1024 * 1024
"""Free bytes below which a failed write is put down to a full disk."""


def _corrupt_fix(path: Path) -> str:
    return f"move {path} aside and restore a backup, or delete it to start afresh (Zoho's DUPLICATE_DATA then prevents re-sends)"


def _diagnose(path: Path, exc: sqlite3.Error) -> str:
    """A failed ledger operation in words an operator can act on: corrupt, read-only, disk full, or as SQLite says."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return f"ledger {path} is corrupt ({exc}): {_corrupt_fix(path)}"
    if name.startswith("SQLITE_READONLY") or not all(os.access(p, os.W_OK) for p in (path, path.parent) if p.exists()):
        return (f"ledger {path} is read-only ({exc}): syncd records each delivery before sending it, so it sends nothing "
                "until the file and its directory are writable (check mount options, owner and mode, and [ledger] path)")
    try:
        fs = os.statvfs(path.parent)
        full = name.startswith("SQLITE_FULL") or fs.f_bavail * fs.f_frsize < LOW_SPACE
    except OSError:
        full = name.startswith("SQLITE_FULL")
    if full:
        return (f"ledger {path}: the disk is full ({exc}): syncd sends nothing it cannot record; "
                "free space on the filesystem holding the ledger and it carries on")
    return f"ledger {path}: {exc}"


class SqliteLedger:
    """The ``Ledger`` over SQLite. Open it with ``SqliteLedger(path)``; ``close`` when done."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._inflight: set[DeliveryKey] = set()
        self._db = self._open(path)

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # Whole-file check (a second or so per million rows): a damaged page refuses the start
            # rather than failing some pass later, halfway through a folder.
            problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise LedgerError(f"ledger {path} is corrupt ({problem}): {_corrupt_fix(path)}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
            version = int(row[0]) if row else 1
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {path} has schema {version}, newer than this syncd ({SCHEMA_VERSION}): upgrade syncd")
            _migrate(db, version)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(_diagnose(path, exc)) from None
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc.strerror}; check [ledger] path and its directory's permissions") from None
        return db

    def _run(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise LedgerError(_diagnose(self.path, exc)) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Statements that land together or not at all (hold ``_lock``)."""
        self._run("BEGIN IMMEDIATE")
        try:
            yield
            self._run("COMMIT")
        except BaseException:
            self._run("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def hold(self, mailbox: str) -> contextlib.AbstractContextManager[None]:
        return hold_mailbox(self.path, mailbox)

    # --- folders -------------------------------------------------------------------------

    def checkpoint(self, mailbox: str, folder: str) -> Checkpoint | None:
        with self._lock:
            row = self._run(
                "SELECT uidvalidity, last_uid FROM checkpoints WHERE mailbox=? AND folder=?", (mailbox, folder)
            ).fetchone()
        return Checkpoint(*row) if row else None

    def set_checkpoint(self, mailbox: str, folder: str, checkpoint: Checkpoint) -> None:
        with self._lock, self._transaction():
            self._run(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT (mailbox, folder) DO UPDATE SET "
                "uidvalidity=excluded.uidvalidity, last_uid=excluded.last_uid, updated=excluded.updated",
                (mailbox, folder, checkpoint.uidvalidity, checkpoint.last_uid, _now()),
            )
            faultpoints.reach("checkpoint")  # the fault tests crash here: written, not yet committed

    # --- messages ------------------------------------------------------------------------

    _MSG_COLS = "mailbox, folder, uidvalidity, uid, message_id, state, reason, subject, sender, attempts, retry_at, updated"

    @staticmethod
    def _message(row: tuple) -> MessageRow:
        return MessageRow(
            MessageKey(*row[:4]), row[4], State(row[5]), row[6], row[7], row[8], row[9], _dt(row[10]), _dt(row[11])
        )

    def message_states(self, mailbox: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> dict[int, MessageRow]:
        found: dict[int, MessageRow] = {}
        for start in range(0, len(uids), 500):
            chunk = list(uids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._run(
                    f"SELECT {self._MSG_COLS} FROM messages WHERE mailbox=? AND folder=? AND uidvalidity=? AND uid IN ({marks})",
                    (mailbox, folder, uidvalidity, *chunk),
                ).fetchall()
            found.update((r[3], self._message(r)) for r in rows)
        return found

    def due(self, mailbox: str, folder: str, uidvalidity: int, now: datetime) -> list[int]:
        """UIDs in RETRY whose time has come (manual retries may sit below the checkpoint)."""
        with self._lock:
            rows = self._run(
                "SELECT uid FROM messages WHERE mailbox=? AND folder=? AND uidvalidity=? AND state=? "
                "AND (retry_at IS NULL OR retry_at <= ?) ORDER BY uid",
                (mailbox, folder, uidvalidity, State.RETRY, now.astimezone(UTC).isoformat(timespec="seconds")),
            ).fetchall()
        return [r[0] for r in rows]

    def record_message(
        self, key: MessageKey, *, message_id: str, state: State, reason: str = "",
        subject: str = "", sender: str = "", retry_at: datetime | None = None,
    ) -> None:
        retry = retry_at.astimezone(UTC).isoformat(timespec="seconds") if retry_at else None
        with self._lock:
            self._run(
                f"INSERT INTO messages ({self._MSG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (mailbox, folder, uidvalidity, uid) DO UPDATE SET message_id=excluded.message_id, "
                "state=excluded.state, reason=excluded.reason, subject=excluded.subject, sender=excluded.sender, "
                "attempts=messages.attempts + 1, retry_at=excluded.retry_at, updated=excluded.updated",
                (key.mailbox, key.folder, key.uidvalidity, key.uid, message_id, state, reason[:2000],
                 subject, sender, retry, _now()),
            )

    def messages(self, *, mailbox: str | None = None, states: Iterable[State] = (), message_id: str | None = None,
                 limit: int | None = None) -> list[MessageRow]:
        where, params = self._filter(mailbox=mailbox, states=states, message_id=message_id)
        sql = f"SELECT {self._MSG_COLS} FROM messages{where} ORDER BY updated DESC, mailbox, folder, uid"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            return [self._message(r) for r in self._run(sql, params).fetchall()]

    def record_skipped(self, mailbox: str, folder: str, uidvalidity: int, uids: Sequence[int], *, reason: str) -> None:
        """Record never-fetched messages as skipped, in one transaction; messages already known are left alone."""
        now = _now()
        rows = [(mailbox, folder, uidvalidity, uid, placeholder_id(MessageKey(mailbox, folder, uidvalidity, uid)),
                 State.SKIPPED, reason, now) for uid in uids]
        with self._lock, self._transaction():
            try:
                self._db.executemany(
                    "INSERT INTO messages (mailbox, folder, uidvalidity, uid, message_id, state, reason, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self.path}: {exc}") from None

    def record_poll(self, mailbox: str, *, error: str = "", error_kind: str = "") -> None:
        """A pass over ``mailbox`` ended, with ``error`` (empty: none); an error is kept until the next one."""
        now = _now()
        with self._lock:
            self._run(
                "INSERT INTO polls VALUES (?, ?, NULL, '', '', NULL) ON CONFLICT (mailbox) DO UPDATE SET last_poll=?",
                (mailbox, now, now),
            )
            if error:
                self._run("UPDATE polls SET last_error=?, error_kind=?, error_at=? WHERE mailbox=?",
                          (error[:2000], error_kind, now, mailbox))
            else:
                self._run("UPDATE polls SET last_success=? WHERE mailbox=?", (now, mailbox))

    def polls(self) -> dict[str, PollRow]:
        """Every mailbox's last poll, by mailbox name."""
        with self._lock:
            rows = self._run("SELECT mailbox, last_poll, last_success, last_error, error_kind, error_at FROM polls").fetchall()
        return {r[0]: PollRow(r[0], _dt(r[1]), _dt(r[2]), r[3], r[4], _dt(r[5])) for r in rows}

    def counts(self) -> dict[tuple[str, State], int]:
        """Messages per (mailbox, state)."""
        with self._lock:
            rows = self._run("SELECT mailbox, state, count(*) FROM messages GROUP BY mailbox, state").fetchall()
        return {(m, State(s)): n for m, s, n in rows}

    @staticmethod
    def _filter(*, mailbox: str | None, states: Iterable[State], message_id: str | None) -> tuple[str, list[object]]:
        clauses, params = [], []
        if mailbox:
            clauses.append("mailbox=?")
            params.append(mailbox)
        states = list(states)
        if states:
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(states)
        if message_id:
            clauses.append("message_id=?")
            params.append(message_id)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    # --- deliveries ----------------------------------------------------------------------

    @staticmethod
    def _delivery(row: tuple) -> DeliveryRow:
        return DeliveryRow(DeliveryKey(*row[:3]), State(row[3]), row[4], row[5], row[6], row[7], _dt(row[8]))

    _DLV_COLS = "message_id, module, record_id, state, zoho_message_id, reason, attempts, mailbox, updated"

    def claim(self, key: DeliveryKey, *, mailbox: str) -> tuple[Claim, DeliveryRow | None]:
        """Mark ``key`` pending before its CRM write, durably; say whether to go ahead."""
        with self._lock:
            if key in self._inflight:
                return Claim.BUSY, None
            row = self._run(
                f"SELECT {self._DLV_COLS} FROM deliveries WHERE message_id=? AND module=? AND record_id=?",
                (key.message_id, key.module, key.record_id),
            ).fetchone()
            existing = self._delivery(row) if row else None
            if existing and existing.state in FINAL:
                return Claim.FINAL, existing
            self._run(
                f"INSERT INTO deliveries ({self._DLV_COLS}) VALUES (?, ?, ?, ?, NULL, '', 1, ?, ?) "
                "ON CONFLICT (message_id, module, record_id) DO UPDATE SET state=excluded.state, "
                "attempts=deliveries.attempts + 1, updated=excluded.updated",
                (key.message_id, key.module, key.record_id, State.PENDING, mailbox, _now()),
            )
            self._inflight.add(key)
        resend = existing is not None and existing.state == State.PENDING
        return (Claim.RESEND if resend else Claim.NEW), existing

    def finish(self, key: DeliveryKey, state: State, *, zoho_message_id: str | None = None, reason: str = "") -> None:
        """Record the outcome of a claimed delivery (and release the claim, even if the write fails)."""
        with self._lock:
            try:
                self._run(
                    "UPDATE deliveries SET state=?, zoho_message_id=coalesce(?, zoho_message_id), reason=?, updated=? "
                    "WHERE message_id=? AND module=? AND record_id=?",
                    (state, zoho_message_id, reason[:2000], _now(), key.message_id, key.module, key.record_id),
                )
            finally:
                self._inflight.discard(key)

    def release(self, key: DeliveryKey) -> None:
        """Drop the in-process claim without recording an outcome (the row stays pending)."""
        with self._lock:
            self._inflight.discard(key)

    def deliveries(self, message_id: str) -> list[DeliveryRow]:
        with self._lock:
            rows = self._run(
                f"SELECT {self._DLV_COLS} FROM deliveries WHERE message_id=? ORDER BY module, record_id", (message_id,)
            ).fetchall()
        return [self._delivery(r) for r in rows]

    # --- operator actions ----------------------------------------------------------------

    def retry(self, *, mailbox: str | None = None, states: Iterable[State] = (), message_id: str | None = None) -> int:
        """Queue matching non-done messages for the next pass; their refused deliveries are tried again."""
        states = list(states) or [State.QUARANTINED, State.RETRY, State.UNMATCHED, State.SKIPPED]
        where, params = self._filter(mailbox=mailbox, states=states, message_id=message_id)
        with self._lock:
            ids = [r[0] for r in self._run(f"SELECT DISTINCT message_id FROM messages{where}", params).fetchall()]
            cur = self._run(f"UPDATE messages SET state=?, retry_at=NULL, updated=?{where}", [State.RETRY, _now(), *params])
            for mid in ids:
                self._run("UPDATE deliveries SET state=? WHERE message_id=? AND state IN (?, ?)",
                          (State.RETRY, mid, State.QUARANTINED, State.RETRY))
        return cur.rowcount

    def forget(self, message_id: str) -> int:
        """Drop the deliveries of ``message_id`` and queue it again, as if never sent."""
        with self._lock:
            self._run("DELETE FROM deliveries WHERE message_id=?", (message_id,))
            cur = self._run("UPDATE messages SET state=?, retry_at=NULL, reason='forgotten', updated=? WHERE message_id=?",
                            (State.RETRY, _now(), message_id))
        return cur.rowcount

    # --- deals ---------------------------------------------------------------------------

    def record_deal(self, key: DeliveryKey, action: str, deal_id: str | None, deal_name: str = "") -> None:
        """Note the deal a delivered email is now linked to (None: none) and what changed it, in one transaction."""
        now = _now()
        with self._lock, self._transaction():
            self._run("UPDATE deliveries SET deal_id=?, deal_name=?, updated=? WHERE message_id=? AND module=? AND record_id=?",
                      (deal_id, deal_name, now, key.message_id, key.module, key.record_id))
            self._run("INSERT INTO deal_links VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (key.message_id, key.module, key.record_id, action, deal_id, deal_name, now))

    def deal_history(self, message_id: str) -> list[DealLink]:
        """Every deal change of ``message_id``'s deliveries, oldest first."""
        with self._lock:
            rows = self._run("SELECT message_id, module, record_id, action, deal_id, deal_name, at FROM deal_links "
                             "WHERE message_id=? ORDER BY rowid", (message_id,)).fetchall()
        return [DealLink(DeliveryKey(*r[:3]), r[3], r[4], r[5], _dt(r[6])) for r in rows]

    def linkable(self, *, module: str, message_ids: Sequence[str] = (), mailbox: str | None = None,
                 record_id: str | None = None, deal_id: str | None = None) -> list[Linkable]:
        """Delivered emails of ``module`` records that carry Zoho's message id, narrowed by the given filters."""
        clauses = ["module=?", "state=?", "zoho_message_id IS NOT NULL"]
        params: list[object] = [module, State.DONE]
        if message_ids:
            clauses.append(f"message_id IN ({','.join('?' * len(message_ids))})")
            params.extend(message_ids)
        for column, value in (("mailbox", mailbox), ("record_id", record_id), ("deal_id", deal_id)):
            if value:
                clauses.append(f"{column}=?")
                params.append(value)
        with self._lock:
            rows = self._run("SELECT message_id, module, record_id, zoho_message_id, mailbox, deal_id, deal_name "
                             f"FROM deliveries WHERE {' AND '.join(clauses)} ORDER BY record_id, message_id", params).fetchall()
        return [Linkable(DeliveryKey(*r[:3]), r[3], r[4], r[5], r[6]) for r in rows]

    # --- unmatched messages, for retroactive association ---------------------------------

    def note_unmatched(self, key: MessageKey, addresses: Sequence[str]) -> None:
        """``key`` waits for a record of one of ``addresses`` (keeps when it was first seen waiting)."""
        now = _now()
        with self._lock, self._transaction():
            for address in addresses:
                self._run("INSERT INTO unmatched VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                          "(mailbox, folder, uidvalidity, uid, address) DO UPDATE SET checked=excluded.checked",
                          (key.mailbox, key.folder, key.uidvalidity, key.uid, address, now, now))

    def unmatched_due(self, mailbox: str, folder: str, uidvalidity: int, *, since: datetime,
                      checked_before: datetime) -> dict[int, list[str]]:
        """Waiting messages first seen after ``since`` with an address last asked about before ``checked_before``.

        Rows older than ``since`` are dropped: their window has passed.
        """
        with self._lock:
            self._run("DELETE FROM unmatched WHERE mailbox=? AND seen<?", (mailbox, _iso(since)))
            rows = self._run("SELECT uid, address FROM unmatched WHERE mailbox=? AND folder=? AND uidvalidity=? "
                             "AND checked<=? ORDER BY uid", (mailbox, folder, uidvalidity, _iso(checked_before))).fetchall()
        waiting: dict[int, list[str]] = {}
        for uid, address in rows:
            waiting.setdefault(uid, []).append(address)
        return waiting

    def mark_unmatched_checked(self, mailbox: str, addresses: Sequence[str]) -> None:
        """The CRM was just asked about ``addresses`` and still has no record of them."""
        now = _now()
        with self._lock, self._transaction():
            for start in range(0, len(addresses), 500):
                chunk = list(addresses[start : start + 500])
                self._run(f"UPDATE unmatched SET checked=? WHERE mailbox=? AND address IN ({','.join('?' * len(chunk))})",
                          (now, mailbox, *chunk))

    def clear_unmatched(self, key: MessageKey) -> None:
        """``key`` waits no more."""
        with self._lock:
            self._run("DELETE FROM unmatched WHERE mailbox=? AND folder=? AND uidvalidity=? AND uid=?",
                      (key.mailbox, key.folder, key.uidvalidity, key.uid))
