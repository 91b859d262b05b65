"""A SQLite session store (WAL mode) that survives restarts and erases what it deletes."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._logging import get_logger
from ..config import data_dir
from ..errors import DuplicateRequest, SessionNotFound, Unavailable
from ..types import Action, Category, Role, SessionInfo, StoredRequest, Turn
from ._limits import refuse_owner, refuse_turns

__all__ = ["SQLiteSessionStore"]

log = get_logger("companion.sessions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY,
    locale     TEXT NOT NULL,
    created_at REAL NOT NULL,
    owner      TEXT NOT NULL DEFAULT '',
    metadata   TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    role       TEXT NOT NULL,
    text       TEXT NOT NULL,
    ts         REAL NOT NULL,
    category   TEXT NOT NULL,
    action     TEXT NOT NULL,
    scores     TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (session_id, idx)
);
-- Added for idempotent turns. A file made before it gets the table when a store opens it
-- (IF NOT EXISTS, one statement: atomic); its turns keep no request id, and nothing else changes.
CREATE TABLE IF NOT EXISTS requests (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    request_id TEXT NOT NULL,
    first_idx  INTEGER NOT NULL,
    n_turns    INTEGER NOT NULL,
    outcome    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session_id, request_id)
);
-- Added for quotas and retention (sessions per owner, purge by age); IF NOT EXISTS: a file
-- made before them gets them when a store opens it.
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions(owner);
CREATE INDEX IF NOT EXISTS sessions_by_created ON sessions(created_at);
"""

# SQLite's primary result codes (the low byte of an extended code) that have a reason of their
# own; every other database error is "error".
_REASONS = {13: "full", 5: "locked", 6: "locked"}  # SQLITE_FULL, SQLITE_BUSY, SQLITE_LOCKED

_TURN_COLUMNS = "role, text, ts, category, action, scores, idx"


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (an empty file is an empty
    database). Creating it ourselves, rather than setting the umask around ``connect``, leaves
    the process-wide umask of other threads alone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SQLiteSessionStore:
    """Sessions and turns in one SQLite file.

    WAL mode lets readers run beside the writer. One connection, guarded by a lock, is shared
    by the threads of a process.

    Durability: ``synchronous=FULL``, so a turn the store acknowledged (``append`` returned) is
    on disk, and survives a power loss as well as a process crash.

    Request ids (idempotent turns) live in a ``requests`` table beside ``turns``, written in the
    turns' transaction and erased with the session. A file made by an earlier version is
    migrated when the store opens it: the table is added (one ``CREATE TABLE IF NOT EXISTS``,
    atomic); its sessions and turns are left as they are.

    Erasure: ``secure_delete`` overwrites the erased rows in the database pages, and every
    erasure (:meth:`delete`) ends with ``PRAGMA wal_checkpoint(TRUNCATE)``, which writes those
    overwritten pages into the database file and empties the ``-wal`` file, where the older
    copies of the pages (with the deleted text) would otherwise stay until the next checkpoint.
    So once ``delete`` returns, the deleted text is in none of the store's files, even if the
    process is killed right after. Not covered: copies outside these files (backups, file
    system snapshots, blocks the file system or the disk itself keeps).

    The same erasure ends :meth:`purge_expired` (retention), when it erased anything.

    Faults: a database error (disk or database full, locked by another connection past
    ``busy_timeout``, an I/O error) raises :class:`~companion.errors.Unavailable` with
    ``component="store"`` and ``reason`` ``"full"``, ``"locked"`` or ``"error"``, and is
    logged (``session_store_unavailable``, the SQLite error name, never data). A write that
    failed is rolled back whole: nothing of it is stored.

    Conversations are private: a directory the store creates is ``0700`` and a database file it
    creates is ``0600``, and SQLite gives its ``-wal`` and ``-shm`` files the database file's
    mode. An existing directory or file keeps its mode.

    Args:
        path: Database file; default ``<user data dir>/companion/sessions.sqlite3``.
        busy_timeout: Seconds a call waits for another connection's lock before it fails
            (``reason="locked"``).
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, busy_timeout: float = 5.0
    ) -> None:
        if not busy_timeout >= 0:
            raise ValueError(f"busy_timeout={busy_timeout!r}: must be >= 0 seconds")
        self.path = Path(path) if path is not None else data_dir() / "sessions.sqlite3"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_private(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _faults(self, operation: str) -> Iterator[None]:
        """Database errors as Unavailable (see the class docstring); the caller's own errors
        (SessionNotFound...) and constraint failures pass unchanged."""
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.InternalError) as exc:
            self._unavailable(operation, exc)
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # IntegrityError, ProgrammingError...
                raise
            self._unavailable(operation, exc)  # "file is not a database", corruption

    def _unavailable(self, operation: str, exc: sqlite3.Error) -> None:
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        reason = _REASONS.get(code & 0xFF, "error") if isinstance(code, int) else "error"
        log.warning(
            "session_store_unavailable",
            backend="sqlite",
            operation=operation,
            error=name,
            reason=reason,
        )
        raise Unavailable(
            f"the session store is unavailable ({name}); retry",
            component="store",
            reason=reason,
        ) from exc

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[None]:
        """One write transaction under the lock: committed whole, or rolled back whole."""
        with self._faults(operation), self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def create(self, info: SessionInfo, max_per_owner: int | None = None) -> None:
        """Store a new session (at most ``max_per_owner`` per owner, counted in the same
        transaction).

        Raises:
            ValueError: a session with this id exists.
            ResourceExhausted: the owner holds ``max_per_owner`` sessions already.
            Unavailable: the database failed.
        """
        row = (info.id, info.locale, info.created_at, info.owner, json.dumps(dict(info.metadata)))
        try:
            with self._transaction("create"):
                if max_per_owner is not None:
                    (held,) = self._db.execute(
                        "SELECT COUNT(*) FROM sessions WHERE owner = ?", (info.owner,)
                    ).fetchone()
                    refuse_owner(held, max_per_owner)
                self._db.execute(
                    "INSERT INTO sessions (id, locale, created_at, owner, metadata)"
                    " VALUES (?,?,?,?,?)",
                    row,
                )
        except sqlite3.IntegrityError:
            raise ValueError("session id already exists") from None

    def get(self, session_id: str) -> SessionInfo | None:
        """The session, or ``None``."""
        with self._faults("get"), self._lock:
            row = self._db.execute(
                "SELECT id, locale, created_at, owner, metadata FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
        if row is None:
            return None
        return SessionInfo(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def append(
        self,
        session_id: str,
        turns: Sequence[Turn],
        request_id: str | None = None,
        outcome: str = "",
        *,
        max_turns: int | None = None,
    ) -> list[Turn]:
        """Append ``turns`` in one transaction, with ``request_id`` (and ``outcome``) if given;
        returns them with indices set.

        Raises:
            SessionNotFound: no such session.
            DuplicateRequest: ``request_id`` already names turns of this session.
            FailedPrecondition: the session would hold more than ``max_turns`` turns.
            Unavailable: the database failed; nothing was appended.
        """
        with self._transaction("append"):
            if not self._db.execute(
                "SELECT 1 FROM sessions WHERE id = ?", (session_id,)
            ).fetchone():
                raise SessionNotFound(f"session {session_id} not found")
            if (
                request_id is not None
                and self._db.execute(
                    "SELECT 1 FROM requests WHERE session_id = ? AND request_id = ?",
                    (session_id, request_id),
                ).fetchone()
            ):
                raise DuplicateRequest("the session already holds turns under this request id")
            (start,) = self._db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            refuse_turns(start, len(turns), max_turns)
            added = [
                Turn(t.role, t.text, t.timestamp, t.category, t.action, dict(t.scores), start + i)
                for i, t in enumerate(turns)
            ]
            self._db.executemany(
                "INSERT INTO turns (session_id, idx, role, text, ts, category, action, scores)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        session_id,
                        t.index,
                        t.role.value,
                        t.text,
                        t.timestamp,
                        t.category.value,
                        t.action.value,
                        json.dumps(dict(t.scores)),
                    )
                    for t in added
                ],
            )
            if request_id is not None:
                self._db.execute(
                    "INSERT INTO requests (session_id, request_id, first_idx, n_turns, outcome)"
                    " VALUES (?,?,?,?,?)",
                    (session_id, request_id, start, len(added), outcome),
                )
        return added

    def find_request(self, session_id: str, request_id: str) -> StoredRequest | None:
        """The turns stored under ``request_id``, or ``None`` (one statement: one snapshot)."""
        cols = ", ".join(f"t.{c}" for c in _TURN_COLUMNS.split(", "))
        with self._faults("find_request"), self._lock:
            rows = self._db.execute(
                f"SELECT r.outcome, {cols} FROM requests r JOIN turns t"
                " ON t.session_id = r.session_id"
                " AND t.idx >= r.first_idx AND t.idx < r.first_idx + r.n_turns"
                " WHERE r.session_id = ? AND r.request_id = ? ORDER BY t.idx",
                (session_id, request_id),
            ).fetchall()
        if not rows:
            return None
        return StoredRequest(request_id, tuple(_turn(r[1:]) for r in rows), rows[0][0])

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """Turns in order from ``offset``, at most ``limit``."""
        with self._faults("history"), self._lock:
            self._require(session_id)
            rows = self._db.execute(
                f"SELECT {_TURN_COLUMNS} FROM turns"
                " WHERE session_id = ? ORDER BY idx LIMIT ? OFFSET ?",
                (session_id, -1 if limit is None else limit, offset),
            ).fetchall()
        return [_turn(r) for r in rows]

    def recent(self, session_id: str, limit: int) -> list[Turn]:
        """The newest ``limit`` turns, oldest first (read newest first, by the primary key)."""
        with self._faults("recent"), self._lock:
            self._require(session_id)
            rows = self._db.execute(
                f"SELECT {_TURN_COLUMNS} FROM turns WHERE session_id = ? ORDER BY idx DESC LIMIT ?",
                (session_id, limit),
            ).fetchall()
        return [_turn(r) for r in reversed(rows)]

    def _require(self, session_id: str) -> None:
        if not self._db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
            raise SessionNotFound(f"session {session_id} not found")

    def delete(self, session_id: str) -> bool:
        """Erase the session and its turns, from the database file and its WAL; False if
        unknown."""
        with self._faults("delete"), self._lock:
            cur = self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            self._checkpoint_after_erasure()
            return cur.rowcount > 0

    def purge_expired(self, created_before: float, batch: int = 500) -> int:
        """Erase every session created before ``created_before`` with its turns and request
        ids, from the database file and its WAL as :meth:`delete` does; returns how many.

        ``batch`` sessions at a time, each batch one statement (atomic) under the lock, so
        calls of the service get the lock between batches; the checkpoint ends the purge.
        """
        purged = 0
        with self._faults("purge"):
            try:
                while True:
                    with self._lock:
                        cur = self._db.execute(
                            "DELETE FROM sessions WHERE id IN"
                            " (SELECT id FROM sessions WHERE created_at < ? LIMIT ?)",
                            (created_before, batch),
                        )
                    purged += cur.rowcount
                    if cur.rowcount < batch:
                        return purged
            finally:
                if purged:
                    with self._lock:
                        self._checkpoint_after_erasure()

    def _checkpoint_after_erasure(self) -> None:
        """Copy the overwritten pages into the database file and empty the WAL, so no older
        frame keeps erased bytes. Every erasure (delete, and any future purge) ends with this;
        the caller holds the lock."""
        busy, wal_frames, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # another process is reading an older snapshot: the WAL could not be emptied
            log.warning("erasure_checkpoint_incomplete", wal_frames=wal_frames)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def _turn(r: Sequence[Any]) -> Turn:
    """A turn from a row of :data:`_TURN_COLUMNS`."""
    return Turn(Role(r[0]), r[1], r[2], Category(r[3]), Action(r[4]), json.loads(r[5]), r[6])
