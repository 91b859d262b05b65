"""Retention and quotas (issue 16, item 6): a maximum session age (hidden at once, erased by the
server's purge task as thoroughly as DeleteSession, Redis keys expiring with it), turns per
session, sessions per API key, and the per-turn history read bounded to what the checks and
the model's window use, in every store."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from companion import (
    Action,
    Category,
    Companion,
    FailedPrecondition,
    GenerationConfig,
    PipelineConfig,
    ResourceExhausted,
    Role,
    SessionInfo,
    SessionNotFound,
    Turn,
)
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.context import build_messages
from companion.prompts import SYSTEM_PROMPT
from companion.server._retention import PurgeTask
from companion.server.app import make_store
from companion.server.metrics import Metrics
from companion.server.settings import ServerSettings
from companion.sessions import (
    InMemorySessionStore,
    RedisSessionStore,
    SQLiteSessionStore,
    new_session_id,
)
from companion.testing import run_test_server, test_settings

from .fakes import FakeGenerator, FakeGuard

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        s = InMemorySessionStore()
    elif request.param == "sqlite":
        s = SQLiteSessionStore(tmp_path / "s.db")
    else:
        # a prefix of its own: the Redis server is shared, and a purge scans every session
        url = request.getfixturevalue("redis_server").url
        s = RedisSessionStore(url, prefix=f"t-{new_session_id()}:")
    yield s
    s.close()


def _pair(text: str, now: float = 0.0) -> list[Turn]:
    now = now or time.time()
    return [
        Turn(Role.USER, text, now, Category.NONE, Action.ANSWERED, {}),
        Turn(Role.ASSISTANT, f"re {text}", now, Category.NONE, Action.ANSWERED, {}),
    ]


def _files_holding(path: Path, marker: str) -> list[str]:
    needle = marker.encode()
    candidates = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return [p.name for p in candidates if p.exists() and needle in p.read_bytes()]


# --- every store: purge_expired, recent, the atomic quotas ---------------------------------


def test_purge_expired_erases_old_sessions_whole_and_keeps_the_rest(store):
    now = time.time()
    old, new = new_session_id(), new_session_id()
    store.create(SessionInfo(old, "en-US", now - 3600, "owner-a"))
    store.create(SessionInfo(new, "en-US", now, "owner-a"))
    for sid in (old, new):
        store.append(sid, _pair(f"text of {sid}"), "req-1", "{}")
    assert store.purge_expired(now - 60) == 1
    assert store.get(old) is None and store.find_request(old, "req-1") is None
    with pytest.raises(SessionNotFound):
        store.history(old)
    assert [t.text for t in store.history(new)] == [f"text of {new}", f"re text of {new}"]
    assert store.find_request(new, "req-1") is not None
    assert store.purge_expired(now - 60) == 0
    store.create(SessionInfo(old, "en-US", now, "owner-a"))  # the id is free again
    assert store.history(old) == []


def test_recent_reads_the_newest_turns_with_their_indexes(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    for n in range(5):
        store.append(sid, _pair(f"m{n}"))
    newest = store.recent(sid, 3)
    assert [(t.index, t.text) for t in newest] == [(7, "re m3"), (8, "m4"), (9, "re m4")]
    assert [t.index for t in store.recent(sid, 100)] == list(range(10))
    assert store.recent(sid, 0) == []
    with pytest.raises(SessionNotFound):
        store.recent(new_session_id(), 3)


def test_append_past_max_turns_is_refused_whole(store):
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    store.append(sid, _pair("one"), max_turns=4)
    store.append(sid, _pair("two"), max_turns=4)
    with pytest.raises(FailedPrecondition, match="limit of 4 turns; start a new session"):
        store.append(sid, _pair("three"), "req-3", "{}", max_turns=4)
    assert len(store.history(sid)) == 4 and store.find_request(sid, "req-3") is None
    store.append(sid, _pair("three"))  # without a limit, the store takes it


def test_racing_creates_never_pass_the_owner_quota(store):
    now = time.time()
    a, b, c = (f"owner-{x}-{new_session_id()}" for x in "abc")  # Redis is shared by tests
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def create() -> None:
        start.wait()
        try:
            store.create(SessionInfo(new_session_id(), "en-US", now, a), max_per_owner=3)
            outcomes.append("created")
        except ResourceExhausted as exc:
            assert "holds 3 sessions, its limit" in str(exc)
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    store.create(SessionInfo(new_session_id(), "en-US", now, b), max_per_owner=3)
    # deleting one of the owner's sessions frees a place
    mine = SessionInfo(new_session_id(), "en-US", now, c)
    store.create(mine, max_per_owner=1)
    with pytest.raises(ResourceExhausted):
        store.create(SessionInfo(new_session_id(), "en-US", now, c), max_per_owner=1)
    assert store.delete(mine.id)
    store.create(SessionInfo(new_session_id(), "en-US", now, c), max_per_owner=1)


def test_sqlite_purge_leaves_no_marker_in_the_db_or_wal_bytes(tmp_path):
    path = tmp_path / "s.db"
    marker = "PURGEME-" + new_session_id()
    store = SQLiteSessionStore(path)
    now = time.time()
    keep = new_session_id()
    store.create(SessionInfo(keep, "en-US", now))
    store.append(keep, _pair("kept"))
    for n in range(3):  # several expired sessions, with long turns in overflow pages
        sid = new_session_id()
        store.create(SessionInfo(sid, "en-US", now - 7200, metadata={"m": marker}))
        for i in range(3):
            store.append(sid, _pair(f"{marker} {n} {i} " + "x" * 3000), f"{marker}-{i}", marker)
    assert _files_holding(path, marker) != []  # the marker is where we look
    assert store.purge_expired(now - 3600, batch=2) == 3  # two batches
    assert _files_holding(path, marker) == []  # while the store is open
    assert [t.text for t in store.history(keep)] == ["kept", "re kept"]
    store.close()
    assert _files_holding(path, marker) == []
    reopened = SQLiteSessionStore(path)
    assert reopened.purge_expired(now - 3600) == 0
    reopened.close()
    assert _files_holding(path, marker) == []


# --- the library: age, turn limit, bounded reads --------------------------------------------


def _companion(config: PipelineConfig, store=None, generator=None, guard=None) -> Companion:
    return Companion(
        guard or FakeGuard(),
        generator or FakeGenerator(["I hear you."] * 10),
        store or InMemorySessionStore(),
        config=config,
    )


def test_a_session_past_its_maximum_age_is_gone_at_once_and_purged():
    clock = [1_000_000.0]
    c = _companion(PipelineConfig(max_session_age_seconds=100))
    c.pipeline.clock = lambda: clock[0]
    asked, unasked = c.start_session(), c.start_session()
    clock[0] += 60
    young = c.start_session()
    asked.send("hello")
    unasked.send("hello")
    clock[0] += 41  # asked and unasked are 101 s old, young 41 s
    for call in (
        lambda: c.session(asked.id),
        lambda: c.history(asked.id),
        lambda: asked.send("hi"),
    ):
        with pytest.raises(SessionNotFound):
            call()
    assert c.store.get(asked.id) is None  # asked for past its age: erased then
    assert c.store.get(unasked.id) is not None  # the purge erases the others
    assert c.purge_expired() == 1
    assert c.store.get(unasked.id) is None and c.session(young.id).id == young.id
    assert _companion(PipelineConfig()).purge_expired() == 0  # no maximum age: nothing expires


def test_a_full_session_refuses_an_ordinary_turn_before_the_model_but_replays_stored_ones():
    guard, generator = FakeGuard(), FakeGenerator(["first reply", "second reply"])
    c = _companion(PipelineConfig(max_turns_per_session=4), generator=generator, guard=guard)
    s = c.start_session()
    s.send("one")
    s.send("two", request_id="req-2")
    with pytest.raises(FailedPrecondition, match="limit of 4 turns; start a new session"):
        s.send("three")  # the generator has no third reply: it was never called
    assert guard.calls[-1][0] == "three"  # checked, so that a crisis is never turned away
    assert len(c.history(s.id)) == 4
    assert s.send("two", request_id="req-2").text == "second reply"  # a retry still works


def test_a_full_session_still_answers_a_crisis_with_the_resources_unstored():
    c = _companion(PipelineConfig(max_turns_per_session=2), generator=FakeGenerator(["hi"]))
    s = c.start_session()
    s.send("one")
    reply = s.send("CRISIS i am not safe")
    assert reply.action is Action.REDIRECTED and reply.resources and reply.turn_index == -1
    assert len(c.history(s.id)) == 2  # nothing stored past the limit


def test_sessions_per_owner_quota_in_the_library():
    c = _companion(PipelineConfig(max_sessions_per_owner=2))
    first = c.start_session(owner="a")
    c.start_session(owner="a")
    with pytest.raises(ResourceExhausted):
        c.start_session(owner="a")
    c.start_session(owner="b")
    c.delete_session(first.id)
    c.start_session(owner="a")


class ReadSpy:
    """Delegates to a real store and records every read of turns: (method, limit, rows)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads: list[tuple[str, int | None, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        rows = self.store.history(session_id, offset, limit)
        self.reads.append(("history", limit, len(rows)))
        return rows

    def recent(self, session_id: str, limit: int) -> list[Turn]:
        rows = self.store.recent(session_id, limit)
        self.reads.append(("recent", limit, len(rows)))
        return rows


def _long_session(store: Any, pairs: int) -> str:
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    for n in range(pairs):
        store.append(sid, _pair(f"message number {n} of a long conversation"))
    return sid


def test_a_turn_reads_only_the_newest_turns_its_window_can_use(store):
    # A window of 400 tokens holds about 30 of these turns: the turn reads 64, not 400.
    sid = _long_session(store, 200)
    generator = FakeGenerator(["ok"], context_window=400)
    spy = ReadSpy(store)
    config = PipelineConfig(generation=GenerationConfig(max_new_tokens=50))
    c = _companion(config, store=spy, generator=generator)
    full = store.history(sid)
    c.send(sid, "and now")
    assert [r[0] for r in spy.reads] == ["recent"] and spy.reads[0][2] == 64
    expected = build_messages(SYSTEM_PROMPT, full, "and now", generator.count_tokens, 350)
    assert generator.calls == [expected]  # exactly what reading the whole history gave


def test_a_turn_reads_more_while_everything_fits_and_stops_at_the_start(store):
    sid = _long_session(store, 150)  # 300 turns, all of them fit a 10,000-token window
    generator = FakeGenerator(["ok"])
    spy = ReadSpy(store)
    c = _companion(PipelineConfig(), store=spy, generator=generator)
    full = store.history(sid)
    c.send(sid, "and now")
    assert spy.reads == [("recent", 64, 64), ("recent", 256, 256), ("recent", 1024, 300)]
    assert len(generator.calls[0]) == 302  # system, every turn, the newest message
    assert generator.calls[0][1:-1] == [{"role": t.role.value, "content": t.text} for t in full]


def test_a_redirected_turn_reads_only_what_the_checks_need(store):
    sid = _long_session(store, 150)
    spy = ReadSpy(store)
    c = _companion(PipelineConfig(), store=spy)
    assert c.send(sid, "CRISIS").action is Action.REDIRECTED
    assert spy.reads == [("recent", 64, 64)]


# --- the server: quotas' status codes, the purge task, the settings -------------------------


def _served(companion: Companion, **settings: Any):
    base = test_settings(api_keys=(KEY_A, KEY_B)).replace(warmup=False, **settings)
    return run_test_server(companion, settings=base)


def test_server_quotas_give_failed_precondition_and_resource_exhausted():
    config = PipelineConfig(max_turns_per_session=2, max_sessions_per_owner=2)
    with _served(_companion(config)) as server:
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.CompanionServiceStub(channel)
        a, b = ([("authorization", f"Bearer {k}")] for k in (KEY_A, KEY_B))
        sid = stub.CreateSession(pb.CreateSessionRequest(), metadata=a).session_id
        stub.CreateSession(pb.CreateSessionRequest(), metadata=a)
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateSession(pb.CreateSessionRequest(), metadata=a)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "holds 2 sessions, its limit" in refused.value.details()
        stub.CreateSession(pb.CreateSessionRequest(), metadata=b)  # another key's own quota
        send = pb.SendMessageRequest(session_id=sid, text="FULLMARK hello")
        stub.SendMessage(send, metadata=a)
        with pytest.raises(grpc.RpcError) as full:
            stub.SendMessage(send, metadata=a)
        assert full.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert full.value.details() == (
            "the session has reached its limit of 2 turns; start a new session"
        )
        channel.close()


def test_server_purge_task_erases_expired_sessions_from_db_and_wal(tmp_path):
    path = tmp_path / "sessions.sqlite3"
    marker = "PURGEDMARK" + new_session_id()
    c = _companion(PipelineConfig(max_session_age_seconds=1.0), store=SQLiteSessionStore(path))
    with capture_logs() as logs, _served(c, purge_interval_seconds=0.2) as server:
        client = server.new_client(api_key=KEY_A)
        sid = client.create_session()
        client.send(sid, f"{marker} a disclosure")
        assert _files_holding(path, marker) != []
        deadline = time.monotonic() + 10
        while c.store.get(sid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.store.get(sid) is None
        assert _files_holding(path, marker) == []  # neither the db file nor its -wal
        registry = server.server.metrics.registry
        while registry.get_sample_value("companion_sessions_purged_total") != 1:
            assert time.monotonic() < deadline  # counted once the run is back on the loop
            time.sleep(0.05)
        with pytest.raises(SessionNotFound):
            client.history(sid)
    purges = [e for e in logs if e["event"] == "sessions_purged" and e["sessions"]]
    assert len(purges) == 1 and marker not in repr(logs)


def test_server_settings_set_retention_and_quotas_and_redis_follows_them(redis_server):
    s = ServerSettings.from_env(
        {
            "COMPANION_SESSION_MAX_AGE_SECONDS": "3600",
            "COMPANION_MAX_TURNS_PER_SESSION": "off",
            "COMPANION_MAX_SESSIONS_PER_KEY": "5",
            "COMPANION_GUARD_TIMEOUT_SECONDS": "2.5",
            "COMPANION_GENERATION_TIMEOUT_SECONDS": "30",
        }
    )
    config = s.pipeline_config()
    assert (config.max_session_age_seconds, config.max_turns_per_session) == (3600, None)
    assert (config.max_sessions_per_owner, config.guard_timeout_seconds) == (5, 2.5)
    assert config.generation_timeout_seconds == 30
    redis_settings = s.replace(session_store="redis", redis_url=redis_server.url)
    store = make_store(redis_settings)
    assert isinstance(store, RedisSessionStore) and store.ttl_seconds == 3600
    store.close()
    assert ServerSettings().replace(session_max_age_seconds=60).session_max_age_seconds == 60
    defaults = ServerSettings().pipeline_config()
    assert defaults.max_session_age_seconds == 30 * 24 * 3600
    assert (defaults.max_turns_per_session, defaults.max_sessions_per_owner) == (2000, 10_000)
    for name, value in (
        ("session_max_age_seconds", "0"),
        ("max_turns_per_session", "1"),
        ("purge_interval_seconds", "0"),
        ("guard_timeout_seconds", "-1"),
    ):
        with pytest.raises(ValueError, match=name):
            ServerSettings.from_env({f"COMPANION_{name.upper()}": value})


def test_a_failed_purge_is_logged_counted_and_tried_again(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteSessionStore(path, busy_timeout=0.1)
    c = _companion(PipelineConfig(max_session_age_seconds=60), store=store)
    store.create(SessionInfo(new_session_id(), "en-US", time.time() - 3600))
    metrics = Metrics()
    task = PurgeTask(c, 3600, metrics)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    with capture_logs() as logs:
        assert asyncio.run(task.run_once()) == 0
    other.execute("ROLLBACK")
    other.close()
    labels = {"component": "store", "reason": "locked"}
    assert metrics.registry.get_sample_value("companion_faults_total", labels) == 1
    (failed,) = [e for e in logs if e["event"] == "purge_failed"]
    assert (failed["error"], failed["reason"]) == ("Unavailable", "locked")
    assert asyncio.run(task.run_once()) == 1  # the next run erases it
    assert metrics.registry.get_sample_value("companion_sessions_purged_total") == 1
    c.close()
