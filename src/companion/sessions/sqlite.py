"""A SQLite session store (WAL mode) that survives restarts and erases what it deletes."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from .._logging import get_logger
from ..config import data_dir
from ..errors import SessionNotFound
from ..types import Action, Category, Role, SessionInfo, Turn

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
"""


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

    Erasure: ``secure_delete`` overwrites the erased rows in the database pages, and every
    erasure (:meth:`delete`) ends with ``PRAGMA wal_checkpoint(TRUNCATE)``, which writes those
    overwritten pages into the database file and empties the ``-wal`` file, where the older
    copies of the pages (with the deleted text) would otherwise stay until the next checkpoint.
    So once ``delete`` returns, the deleted text is in none of the store's files, even if the
    process is killed right after. Not covered: copies outside these files (backups, file
    system snapshots, blocks the file system or the disk itself keeps).

    Conversations are private: a directory the store creates is ``0700`` and a database file it
    creates is ``0600``, and SQLite gives its ``-wal`` and ``-shm`` files the database file's
    mode. An existing directory or file keeps its mode.

    Args:
        path: Database file; default ``<user data dir>/companion/sessions.sqlite3``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / "sessions.sqlite3"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_private(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)

    def create(self, info: SessionInfo) -> None:
        """Store a new session."""
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions (id, locale, created_at, owner, metadata) VALUES (?,?,?,?,?)",
                (
                    info.id,
                    info.locale,
                    info.created_at,
                    info.owner,
                    json.dumps(dict(info.metadata)),
                ),
            )

    def get(self, session_id: str) -> SessionInfo | None:
        """The session, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, locale, created_at, owner, metadata FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
        if row is None:
            return None
        return SessionInfo(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def append(self, session_id: str, turns: Sequence[Turn]) -> list[Turn]:
        """Append ``turns`` in one transaction; returns them with indices set."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if not self._db.execute(
                    "SELECT 1 FROM sessions WHERE id = ?", (session_id,)
                ).fetchone():
                    raise SessionNotFound(f"session {session_id} not found")
                (start,) = self._db.execute(
                    "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE session_id = ?",
                    (session_id,),
                ).fetchone()
                added = [
                    Turn(
                        t.role, t.text, t.timestamp, t.category, t.action, dict(t.scores), start + i
                    )
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
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return added

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """Turns in order from ``offset``, at most ``limit``."""
        with self._lock:
            if not self._db.execute(
                "SELECT 1 FROM sessions WHERE id = ?", (session_id,)
            ).fetchone():
                raise SessionNotFound(f"session {session_id} not found")
            rows = self._db.execute(
                "SELECT role, text, ts, category, action, scores, idx FROM turns"
                " WHERE session_id = ? ORDER BY idx LIMIT ? OFFSET ?",
                (session_id, -1 if limit is None else limit, offset),
            ).fetchall()
        return [
            Turn(Role(r[0]), r[1], r[2], Category(r[3]), Action(r[4]), json.loads(r[5]), r[6])
            for r in rows
        ]

    def delete(self, session_id: str) -> bool:
        """Erase the session and its turns, from the database file and its WAL; False if
        unknown."""
        with self._lock:
            cur = self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            self._checkpoint_after_erasure()
            return cur.rowcount > 0

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
