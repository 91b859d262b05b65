"""The Redis session store on a real redis-server: concurrency, TTL, erasure, a dead Redis, the
settings that select it and the gRPC service on it. Behaviour shared with the other stores is
tested in test_sessions.py (parametrized over all three)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis
from structlog.testing import capture_logs

from companion import Action, Category, Companion, Role, SessionInfo, SessionNotFound, Turn
from companion._companion import _make_store
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.errors import Unavailable
from companion.server.app import make_store
from companion.server.settings import ServerSettings
from companion.sessions import RedisSessionStore, new_session_id
from companion.testing import run_test_server, test_settings

from .fakes import FakeGenerator, FakeGuard
from .redis_server import free_port

DAY = 24 * 3600


def _pair(text: str, now: float | None = None) -> list[Turn]:
    now = time.time() if now is None else now
    return [
        Turn(Role.USER, text, now, Category.NONE, Action.ANSWERED, {"crisis": 0.01}),
        Turn(Role.ASSISTANT, f"re: {text}", now, Category.NONE, Action.ANSWERED, {}),
    ]


def _keys_with(client: redis.Redis, session_id: str) -> list[str]:
    return sorted(client.scan_iter(match=f"*{session_id}*", count=1000))


@pytest.fixture
def raw(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def test_two_writers_get_200_gapless_indexes_with_pairs_adjacent(redis_server):
    # Two stores, two connection pools: as two server processes would be.
    stores = [RedisSessionStore(redis_server.url) for _ in range(2)]
    sid = new_session_id()
    stores[0].create(SessionInfo(sid, "en-US", time.time()))
    start = threading.Barrier(2)
    returned: dict[int, list[int]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            start.wait(10)
            for n in range(50):
                added = stores[w].append(sid, _pair(f"w{w}-{n}"))
                returned[w].extend(t.index for t in added)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    turns = stores[1].history(sid)
    assert [t.index for t in turns] == list(range(200))
    assert sorted(returned[0] + returned[1]) == list(range(200))  # no index handed out twice
    for user, assistant in zip(turns[::2], turns[1::2], strict=True):
        assert user.role is Role.USER and assistant.role is Role.ASSISTANT
        assert assistant.text == f"re: {user.text}"  # the pair stayed together
    for w in (0, 1):  # each writer's pairs in its own order, at the indexes it was given
        mine = [t for t in turns if t.text.startswith(f"w{w}-")]
        assert [t.text for t in mine] == [f"w{w}-{n}" for n in range(50)]
        assert [t.index for t in mine] == returned[w][::2]
    for s in stores:
        s.close()


def test_ttl_counts_from_creation_and_turns_expire_with_the_session(redis_server, raw):
    # Retention is a maximum age from creation (session_max_age_seconds): a turn does not
    # extend it, and the turns and request ids expire with the session's info.
    store = RedisSessionStore(redis_server.url, ttl_seconds=7 * DAY)
    sid = new_session_id()
    info_key, turns_key, requests_key = store.keys(sid)
    store.create(SessionInfo(sid, "en-US", time.time()))
    assert 7 * DAY - 5 <= raw.ttl(info_key) <= 7 * DAY
    store.append(sid, _pair("hello"), "req-1", "{}")
    assert all(7 * DAY - 5 <= raw.ttl(k) <= 7 * DAY for k in (turns_key, requests_key))
    raw.expire(info_key, 60)  # as if the session were almost a week old
    store.history(sid)  # reading does not extend it
    store.find_request(sid, "req-1")
    store.recent(sid, 2)
    assert raw.ttl(info_key) <= 60
    store.append(sid, _pair("again"))  # nor does a turn: the other keys follow the session's
    assert _keys_with(raw, sid) == sorted([info_key, turns_key, requests_key])
    for key in (info_key, turns_key, requests_key):
        assert 0 < raw.ttl(key) <= 60, key
    store.close()


def test_a_session_expires_whole_after_its_ttl(redis_server, raw):
    store = RedisSessionStore(redis_server.url, ttl_seconds=1)
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    store.append(sid, _pair("short-lived"))
    deadline = time.monotonic() + 5
    while store.get(sid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.get(sid) is None
    with pytest.raises(SessionNotFound):
        store.history(sid)
    with pytest.raises(SessionNotFound):
        store.append(sid, _pair("too late"))
    time.sleep(0.2)  # the turns key had the same TTL, refreshed by the same script
    assert _keys_with(raw, sid) == []
    store.close()


def test_delete_leaves_no_key_of_the_session(redis_server, raw):
    store = RedisSessionStore(redis_server.url)
    sid, other = new_session_id(), new_session_id()
    for s in (sid, other):
        store.create(SessionInfo(s, "en-GB", time.time(), "owner", {"app": "x"}))
        for n in range(5):
            store.append(s, _pair(f"{s} {n}"), f"req-{n}" if n % 2 else None, "{}")
    assert len(_keys_with(raw, sid)) == 3
    assert store.delete(sid) is True
    assert _keys_with(raw, sid) == []
    assert store.find_request(sid, "req-1") is None
    # nothing else mentions it either (values included), and the other session is whole
    assert not any(sid in (raw.get(k) or "") for k in raw.scan_iter(match="*session:*"))
    assert len(store.history(other)) == 10 and len(_keys_with(raw, other)) == 3
    assert store.find_request(other, "req-3") is not None
    assert store.delete(sid) is False
    store.close()


def test_invalid_ttl_and_timeouts_are_named():
    for kwargs, name in (
        ({"ttl_seconds": 0}, "ttl_seconds=0"),
        ({"ttl_seconds": 1.5}, "ttl_seconds=1.5"),
        ({"timeout": 0}, "timeout=0"),
        ({"connect_timeout": -1.0}, "connect_timeout=-1.0"),
    ):
        with pytest.raises(ValueError, match=name):
            RedisSessionStore("redis://127.0.0.1:1/0", **kwargs)


# --- a dead Redis: Unavailable, never a hang ----------------------------------------------


def _every_operation(store: RedisSessionStore, sid: str):
    return [
        lambda: store.create(SessionInfo(new_session_id(), "en-US", time.time())),
        lambda: store.get(sid),
        lambda: store.append(sid, _pair("lost")),
        lambda: store.history(sid),
        lambda: store.delete(sid),
    ]


def test_closed_port_gives_unavailable_at_once():
    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1, timeout=1)
    for op in _every_operation(store, new_session_id()):
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="session store is unavailable"):
            op()
        assert time.monotonic() - t0 < 1.5
    store.close()


def test_redis_stopped_mid_session_gives_unavailable(make_redis_server):
    server = make_redis_server()
    store = RedisSessionStore(server.url, connect_timeout=1, timeout=1)
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    store.append(sid, _pair("before"))  # the pool now holds a live connection
    server.stop()
    for op in _every_operation(store, sid):
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            op()
        assert time.monotonic() - t0 < 1.5
    store.close()


def test_frozen_redis_times_out_then_recovers(make_redis_server):
    server = make_redis_server()
    store = RedisSessionStore(server.url, connect_timeout=0.5, timeout=0.5)
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    server.pause()
    try:
        for op in (lambda: store.get(sid), lambda: store.history(sid)):
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="TimeoutError"):
                op()
            assert 0.4 < time.monotonic() - t0 < 2.0  # the operation timeout, not a hang
    finally:
        server.resume()
    assert store.get(sid) is not None and store.history(sid) == []  # reconnects by itself
    store.close()


# --- credentials never reach logs, reprs or errors ----------------------------------------

SECRET = "pw-7f3a9c2e51d8"


def test_password_is_used_but_never_logged(make_redis_server):
    server = make_redis_server("--requirepass", SECRET)
    url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
    with capture_logs() as logs:
        store = RedisSessionStore(url)
        sid = new_session_id()
        store.create(SessionInfo(sid, "en-US", time.time()))
        assert store.get(sid) is not None
        wrong = RedisSessionStore(f"redis://:wrong-{SECRET}@127.0.0.1:{server.port}/0")
        with pytest.raises(Unavailable) as failed:
            wrong.get(sid)
        query = RedisSessionStore(f"redis://127.0.0.1:{server.port}/0?password={SECRET}")
        assert query.get(sid) is not None  # the query form works too
    assert [e["url"] for e in logs if e["event"] == "session_store"] == [
        f"redis://127.0.0.1:{server.port}/0"
    ] * 3
    assert any(e["event"] == "session_store_unavailable" for e in logs)
    seen = [str(logs), repr(store), repr(wrong), repr(query), str(failed.value)]
    assert not any(SECRET in s for s in seen)
    for s in (store, wrong, query):
        s.close()


# --- selection: ServerSettings and Companion.from_defaults ---------------------------------


def test_settings_select_redis_from_the_environment(redis_server):
    s = ServerSettings.from_env(
        {
            "COMPANION_SESSION_STORE": "redis",
            "COMPANION_REDIS_URL": redis_server.url,
            "COMPANION_SESSION_MAX_AGE_SECONDS": "3600",  # the Redis TTL follows the retention
            "COMPANION_REDIS_CONNECT_TIMEOUT": "0.25",
            "COMPANION_REDIS_TIMEOUT": "0.75",
        }
    )
    assert (s.session_store, s.redis_url) == ("redis", redis_server.url)
    assert s.session_max_age_seconds == 3600
    store = make_store(s)
    assert isinstance(store, RedisSessionStore) and store.ttl_seconds == 3600
    kwargs = store._client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.25, 0.75)
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    assert store.get(sid) is not None
    store.close()
    assert make_store(ServerSettings()) == "sqlite"  # the other kinds stay by name


def test_settings_hide_and_check_the_url():
    url = f"redis://:{SECRET}@cache.internal:6379/2"
    assert SECRET not in repr(ServerSettings(session_store="redis", redis_url=url))
    with pytest.raises(ValueError) as bad:
        ServerSettings.from_env({"COMPANION_REDIS_URL": f"http://:{SECRET}@cache:6379"})
    assert str(bad.value) == (
        "redis_url (COMPANION_REDIS_URL): must start with redis://, rediss:// or unix://"
    )
    for field, value in (
        ("session_max_age_seconds", 0),
        ("redis_timeout", 0),
        ("redis_timeout", -1),
    ):
        with pytest.raises(ValueError, match=field):
            ServerSettings(**{field: value})


def test_from_defaults_builds_a_redis_store_from_the_url(redis_server):
    # Companion.from_defaults("redis", redis_url=...) hands both to _make_store before it loads
    # the models (which are tested elsewhere).
    store = _make_store("redis", None, redis_server.url)
    assert isinstance(store, RedisSessionStore)
    assert store.url == redis_server.url and store.ttl_seconds == 30 * DAY
    sid = new_session_id()
    store.create(SessionInfo(sid, "en-US", time.time()))
    assert store.get(sid) is not None
    store.close()


def test_the_append_benchmark_runs_and_prints_every_row():
    # The README's Scaling figures come from it: it must keep running.
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks/session_append.py"), "--n", "30", "--warmup", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[0] for line in proc.stdout.splitlines()[2:5]]
    assert rows == ["sqlite", "redis", "redis+lock"], proc.stdout


# --- the gRPC service on Redis -------------------------------------------------------------


def test_grpc_create_send_history_delete_on_redis(redis_server, raw):
    store = RedisSessionStore(redis_server.url)
    companion = Companion(FakeGuard(), FakeGenerator(["I hear you.", "Tell me more."]), store)
    settings = test_settings().replace(warmup=False)
    with run_test_server(companion, settings=settings) as server:
        cl = server.client
        sid = cl.create_session(locale="en-GB", metadata={"app": "redis-test"})
        assert store.get(sid).metadata == {"app": "redis-test"}
        assert cl.send(sid, "I had a long day").turn_index == 1
        crisis = cl.send(sid, "CRISIS I cannot go on")  # FakeGuard redirects it
        assert crisis.action is Action.REDIRECTED and crisis.turn_index == 3
        assert cl.send(sid, "thanks for listening").text == "Tell me more."
        turns = cl.history(sid, page_size=4)  # two pages
        assert [t.index for t in turns] == list(range(6))
        assert [t.text for t in turns[:2]] == ["I had a long day", "I hear you."]
        assert turns[2].category is Category.CRISIS
        assert len(_keys_with(raw, sid)) == 3  # info, turns, request ids (the client sends them)
        cl.delete_session(sid)
        assert _keys_with(raw, sid) == []
        with pytest.raises(SessionNotFound):
            cl.history(sid)


def test_grpc_dead_redis_is_unavailable(make_redis_server):
    server_redis = make_redis_server()
    store = RedisSessionStore(server_redis.url, connect_timeout=0.5, timeout=0.5)
    companion = Companion(FakeGuard(), FakeGenerator(["unused"]), store)
    settings = test_settings().replace(warmup=False)
    with (
        run_test_server(companion, settings=settings) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.CompanionServiceStub(channel)
        sid = stub.CreateSession(pb.CreateSessionRequest(locale="en-US"), timeout=5).session_id
        server_redis.stop()
        for call, request in (
            (stub.CreateSession, pb.CreateSessionRequest(locale="en-US")),
            (stub.SendMessage, pb.SendMessageRequest(session_id=sid, text="hello")),
            (stub.GetHistory, pb.GetHistoryRequest(session_id=sid)),
            (stub.DeleteSession, pb.DeleteSessionRequest(session_id=sid)),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE, call
