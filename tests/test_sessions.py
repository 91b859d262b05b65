"""Session stores: all implementations behave alike; SQLite survives a restart (the Redis store's
own tests are in test_sessions_redis.py)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

from companion import (
    Action,
    Category,
    DuplicateRequest,
    Role,
    SessionInfo,
    SessionNotFound,
    StoredRequest,
    Turn,
)
from companion.sessions import (
    InMemorySessionStore,
    RedisSessionStore,
    SQLiteSessionStore,
    is_valid_session_id,
    new_session_id,
)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        s = InMemorySessionStore()
    elif request.param == "sqlite":
        s = SQLiteSessionStore(tmp_path / "s.db")
    else:
        s = RedisSessionStore(request.getfixturevalue("redis_server").url)
    yield s
    s.close()


def _turns(text: str) -> list[Turn]:
    now = time.time()
    return [
        Turn(Role.USER, text, now, Category.CRISIS, Action.REDIRECTED, {"crisis": 0.9}),
        Turn(Role.ASSISTANT, "reply", now, Category.CRISIS, Action.REDIRECTED, {"crisis": 0.9}),
    ]


def test_create_append_history_delete(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-GB", time.time(), "owner-a", {"app": "x"}))
    assert store.get(sid).owner == "owner-a" and store.get(sid).metadata == {"app": "x"}
    added = store.append(sid, _turns("one"))
    assert [t.index for t in added] == [0, 1]
    store.append(sid, _turns("two"))
    history = store.history(sid)
    assert [t.index for t in history] == [0, 1, 2, 3]
    assert history[0].text == "one" and history[0].category is Category.CRISIS
    assert history[0].action is Action.REDIRECTED and history[0].scores == {"crisis": 0.9}
    assert [t.index for t in store.history(sid, offset=1, limit=2)] == [1, 2]
    assert store.delete(sid) is True
    assert store.get(sid) is None and store.delete(sid) is False
    with pytest.raises(SessionNotFound):
        store.history(sid)


def test_append_to_unknown_session(store):
    with pytest.raises(SessionNotFound):
        store.append(new_session_id(), _turns("x"))


def test_unknown_session_reads_and_deletes(store):
    sid = new_session_id()
    assert store.get(sid) is None and store.delete(sid) is False
    with pytest.raises(SessionNotFound):
        store.history(sid)


def test_new_session_has_empty_history_and_unicode_round_trips(store):
    sid = new_session_id()
    info = SessionInfo(sid, "de-DE", 1767225600.123456, "", {"clé": "wert ✓"})
    store.create(info)
    assert store.get(sid) == info and store.history(sid) == []
    turn = Turn(Role.USER, "Grüße 👋\nzweite Zeile", 1767225600.5, scores={"crisis": 0.125})
    store.append(sid, [turn])
    (back,) = store.history(sid)
    expected = Turn(turn.role, turn.text, turn.timestamp, scores={"crisis": 0.125}, index=0)
    assert back == expected


def test_history_offset_and_limit(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    for n in range(3):
        store.append(sid, _turns(f"m{n}"))  # turns 0..5
    assert [t.index for t in store.history(sid, offset=4)] == [4, 5]
    assert [t.index for t in store.history(sid, offset=2, limit=3)] == [2, 3, 4]
    assert [t.index for t in store.history(sid, offset=5, limit=10)] == [5]
    assert store.history(sid, offset=6) == [] and store.history(sid, offset=99, limit=2) == []
    assert store.history(sid, limit=0) == [] and store.history(sid, offset=3, limit=0) == []
    assert [t.text for t in store.history(sid, offset=2, limit=2)] == ["m1", "reply"]


def test_creating_an_existing_id_fails_and_keeps_the_first(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-GB", 1.0, "first"))
    with pytest.raises((ValueError, sqlite3.IntegrityError)):
        store.create(SessionInfo(sid, "fr-FR", 2.0, "second"))
    assert store.get(sid) == SessionInfo(sid, "en-GB", 1.0, "first")


def test_deleted_session_can_be_told_from_a_live_one(store):
    keep, gone = new_session_id(), new_session_id()
    for sid in (keep, gone):
        store.create(SessionInfo(sid, "en-US", time.time()))
        store.append(sid, _turns(sid))
    assert store.delete(gone) is True
    assert [t.text for t in store.history(keep)] == [keep, "reply"]
    with pytest.raises(SessionNotFound):
        store.append(gone, _turns("late"))


# --- request ids (idempotent turns) -------------------------------------------------------


def test_request_id_is_stored_with_the_turns_and_found_again(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    store.append(sid, _turns("before"))  # turns without an id are not found by any id
    added = store.append(sid, _turns("with id"), "req-1", '{"v": 1}')
    found = store.find_request(sid, "req-1")
    assert found == StoredRequest("req-1", tuple(added), '{"v": 1}')
    assert [t.index for t in found.turns] == [2, 3] and found.turns[0].text == "with id"
    assert store.find_request(sid, "req-2") is None
    assert store.find_request(new_session_id(), "req-1") is None


def test_a_request_id_is_stored_once_per_session(store):
    sid, other = new_session_id(), new_session_id()
    for s in (sid, other):
        store.create(SessionInfo(s, "en-US", time.time()))
    store.append(sid, _turns("first"), "req-1", "{}")
    with pytest.raises(DuplicateRequest):
        store.append(sid, _turns("second"), "req-1", "{}")
    assert [t.text for t in store.history(sid)] == ["first", "reply"]  # nothing appended
    store.append(other, _turns("elsewhere"), "req-1", "{}")  # ids are per session
    assert store.find_request(other, "req-1").turns[0].text == "elsewhere"
    assert store.find_request(sid, "req-1").turns[0].text == "first"


def test_racing_appends_with_one_request_id_store_one_pair(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def write(n: int) -> None:
        start.wait()
        try:
            store.append(sid, _turns(f"try {n}"), "req-race", "{}")
            outcomes.append("stored")
        except DuplicateRequest:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["duplicate"] * 7 + ["stored"]
    assert len(store.history(sid)) == 2


def test_delete_erases_the_request_ids_too(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    store.append(sid, _turns("x"), "req-1", "{}")
    assert store.delete(sid)
    assert store.find_request(sid, "req-1") is None
    store.create(SessionInfo(sid, "en-US", time.time()))  # the same id again: a fresh session
    store.append(sid, _turns("y"), "req-1", "{}")
    assert store.find_request(sid, "req-1").turns[0].text == "y"


# The schema of SQLite files written before request ids existed (this project's earlier
# releases), verbatim.
_OLD_SCHEMA = """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY, locale TEXT NOT NULL, created_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT '', metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE turns (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, ts REAL NOT NULL,
    category TEXT NOT NULL, action TEXT NOT NULL, scores TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (session_id, idx)
);
"""


def test_sqlite_file_from_before_request_ids_is_migrated_and_keeps_its_turns(tmp_path):
    path = tmp_path / "old.sqlite3"
    sid = new_session_id()
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.execute("INSERT INTO sessions VALUES (?, 'en-GB', 1.0, 'owner', '{}')", (sid,))
    db.execute(
        "INSERT INTO turns VALUES (?, 0, 'user', 'old turn', 1.0, 'none', 'answered', '{}')",
        (sid,),
    )
    db.commit()
    db.close()
    store = SQLiteSessionStore(path)
    assert [t.text for t in store.history(sid)] == ["old turn"]
    assert store.find_request(sid, "req-1") is None
    added = store.append(sid, _turns("new turn"), "req-1", "{}")
    assert [t.index for t in added] == [1, 2]
    store.close()
    reopened = SQLiteSessionStore(path)  # opening a migrated file again changes nothing
    assert reopened.find_request(sid, "req-1").turns == tuple(added)
    assert [t.text for t in reopened.history(sid)] == ["old turn", "new turn", "reply"]
    assert reopened.delete(sid)
    reopened.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)  # erased with it
    db.close()


def test_sqlite_history_survives_reopening(tmp_path):
    path = tmp_path / "sessions.sqlite3"
    first = SQLiteSessionStore(path)
    sid = new_session_id()
    first.create(SessionInfo(sid, "en-US", time.time()))
    first.append(sid, _turns("remember me"))
    first.close()
    second = SQLiteSessionStore(path)
    assert second.get(sid).locale == "en-US"
    assert [t.text for t in second.history(sid)] == ["remember me", "reply"]
    second.close()


def test_sqlite_uses_wal_and_delete_erases_turns(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteSessionStore(path)
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    store.append(sid, _turns("to be erased"))
    store.delete(sid)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 0
    db.close()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sqlite_files_and_new_directory_are_private(tmp_path):
    old = os.umask(0o022)  # the common default, which made the files 0644
    try:
        path = tmp_path / "new" / "dir" / "sessions.sqlite3"
        store = SQLiteSessionStore(path)
        sid = new_session_id()
        store.create(SessionInfo(sid, "en-US", time.time()))
        store.append(sid, _turns("private"))
        wal, shm = path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: _mode(p) for p in (path, wal, shm)} == {
            p.name: 0o600 for p in (path, wal, shm)
        }
        assert _mode(path.parent) == 0o700
        store.close()
    finally:
        os.umask(old)


def test_sqlite_leaves_existing_directory_and_file_modes_alone(tmp_path):
    path = tmp_path / "shared.sqlite3"
    path.touch()
    path.chmod(0o640)
    tmp_path.chmod(0o750)
    SQLiteSessionStore(path).close()
    assert _mode(path) == 0o640 and _mode(tmp_path) == 0o750


def test_session_ids_are_128_bit_random():
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_session_id(i) and len(i) == 22 for i in ids)  # 22 * 6 bits >= 128
    assert not is_valid_session_id("short") and not is_valid_session_id("a" * 21 + "!")


# --- erasure: deleted text leaves no bytes on disk ---------------------------------------

_ERASE_SCRIPT = """
import sys, time
from companion import Action, Category, Role, SessionInfo, Turn
from companion.sessions import SQLiteSessionStore, new_session_id
path, marker = sys.argv[1], sys.argv[2]
store = SQLiteSessionStore(path)
keep = new_session_id()
store.create(SessionInfo(keep, "en-US", time.time()))
store.append(keep, [Turn(Role.USER, "kept turn", time.time(), Category.NONE, Action.ANSWERED)])
sid = new_session_id()
store.create(SessionInfo(sid, "en-US", time.time(), metadata={"m": marker}))
for i in range(5):
    store.append(sid, [Turn(Role.USER, f"{marker} {i} " + "x" * 3000, time.time(),
                            Category.CRISIS, Action.REDIRECTED)])
assert store.delete(sid)
import os
os._exit(0)  # a crash: no close, no final checkpoint
"""


def _files_holding(path, marker: str) -> list[str]:
    """The database file and its -wal/-shm (those that exist) whose raw bytes hold ``marker``."""
    needle = marker.encode()
    candidates = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return [p.name for p in candidates if p.exists() and needle in p.read_bytes()]


def test_sqlite_delete_leaves_no_deleted_bytes_in_db_or_wal(tmp_path):
    path = tmp_path / "s.db"
    marker = "ERASEME-" + new_session_id()
    store = SQLiteSessionStore(path)
    keep = new_session_id()
    store.create(SessionInfo(keep, "en-US", time.time()))
    store.append(keep, _turns("kept turn"))
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time(), metadata={"m": marker}))
    for i in range(5):  # long turns too, so that some spill into overflow pages
        store.append(sid, _turns(f"{marker} {i} " + "x" * 3000), f"{marker}-{i}", "{}")
    assert _files_holding(path, marker) != []  # the marker was written where we look
    assert store.delete(sid)
    assert _files_holding(path, marker) == []  # (1) while the store is still open
    assert [t.text for t in store.history(keep)] == ["kept turn", "reply"]
    store.close()
    assert _files_holding(path, marker) == []


def test_sqlite_delete_leaves_no_deleted_bytes_after_a_crash_and_reopening(tmp_path):
    path = tmp_path / "s.db"
    marker = "ERASEME-" + new_session_id()
    done = subprocess.run(
        [sys.executable, "-c", _ERASE_SCRIPT, str(path), marker],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert path.with_name(path.name + "-wal").exists()  # it really ended without closing
    assert _files_holding(path, marker) == []  # (2) after the crash, before any recovery
    store = SQLiteSessionStore(path)  # (3) reopening recovers the WAL
    assert [t.text for t in store.history(_only_session_id(path))] == ["kept turn"]
    assert _files_holding(path, marker) == []
    store.close()
    assert _files_holding(path, marker) == []


def _only_session_id(path) -> str:
    """The id of the one session left in the database (read with a plain connection)."""
    db = sqlite3.connect(path)
    try:
        ((sid,),) = db.execute("SELECT id FROM sessions").fetchall()
    finally:
        db.close()
    return str(sid)
