"""Fail closed under store faults (issue 16, items 4 and 7), by injection into the real
:class:`SQLiteSessionStore`'s dependency, its sqlite3 connection: a database made full with
``PRAGMA max_page_count``, a second connection holding the write lock past a short busy timeout;
and an unreachable Redis. Through a real server: UNAVAILABLE with a clear message and no text,
nothing partial stored, the server still SERVING, the event logged and counted."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from companion import PipelineConfig
from companion.sessions import RedisSessionStore, SQLiteSessionStore

from .fakes import FakeGuard
from .fault_injection import (
    MARK,
    UNAVAILABLE,
    FaultyModel,
    Servers,
    no_marker,
)
from .redis_server import free_port


@pytest.fixture
def serve() -> Iterator[Servers]:
    servers = Servers()
    yield servers
    servers.close()


# --- the store: disk full, database locked -> UNAVAILABLE, nothing partial ------------------


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_full_sqlite_database_is_unavailable_stores_nothing_and_recovers(serve, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    store = SQLiteSessionStore(db)
    served = serve(FakeGuard(), FaultyModel(), store, PipelineConfig())
    sid = served.session()
    served.send(sid, "a first message")
    # The store's own connection (its dependency) may not grow the file past its size now.
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    text = f"{MARK} " + "a long message " * 250
    with capture_logs() as logs:
        with pytest.raises(grpc.RpcError) as failed:
            served.send(sid, text, request_id="req-full")
        time.sleep(0.2)
    assert failed.value.code() == UNAVAILABLE
    assert failed.value.details() == "the session store is unavailable (SQLITE_FULL); retry"
    assert _rows(db, "SELECT COUNT(*) FROM turns") == [(2,)]  # nothing partial
    assert _rows(db, "SELECT COUNT(*) FROM requests") == [(0,)]
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert len(served.server.client.history(sid)) == 2  # reads still work
    assert served.faults("store", "full", 1) == 1
    (event,) = [e for e in logs if e["event"] == "session_store_unavailable"]
    assert (event["operation"], event["error"], event["reason"]) == (
        "append",
        "SQLITE_FULL",
        "full",
    )
    no_marker(logs, failed.value)
    assert served.serving()
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space again: the retry is stored
    assert served.send(sid, text, request_id="req-full").turn_index == 3
    assert served.send(sid, text, request_id="req-full").turn_index == 3  # once
    assert _rows(db, "SELECT COUNT(*) FROM turns") == [(4,)]


def test_locked_sqlite_database_is_unavailable_then_recovers(serve, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    store = SQLiteSessionStore(db, busy_timeout=0.2)
    served = serve(FakeGuard(), FaultyModel(), store, PipelineConfig())
    sid = served.session()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                served.send(sid, f"hello {MARK}", request_id="req-locked")
            took = time.monotonic() - started
            with pytest.raises(grpc.RpcError) as create_failed:
                served.session()
            time.sleep(0.2)
        assert failed.value.code() == create_failed.value.code() == UNAVAILABLE
        assert "SQLITE_BUSY" in failed.value.details() and took < 5
        assert served.server.client.history(sid) == []  # readers are not blocked in WAL mode
        assert served.faults("store", "locked", 2) == 2
        reasons = [e["reason"] for e in logs if e["event"] == "session_store_unavailable"]
        assert reasons == ["locked", "locked"]
        no_marker(logs, failed.value)
        assert served.serving()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert served.send(sid, f"hello {MARK}", request_id="req-locked").turn_index == 1
    assert _rows(db, "SELECT COUNT(*) FROM turns") == [(2,)]


def test_unreachable_redis_is_a_counted_store_fault(serve):
    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    served = serve(FakeGuard(), FaultyModel(), store, PipelineConfig())
    with capture_logs() as logs:
        with pytest.raises(grpc.RpcError) as failed:
            served.session()
        time.sleep(0.2)
    assert failed.value.code() == UNAVAILABLE
    assert served.faults("store", "unreachable", 1) == 1
    (rpc,) = [e for e in logs if e["event"] == "rpc"]
    assert rpc["faults"] == ["store:unreachable"]
    assert served.serving()
