"""The Redis store's turn lock on a real redis-server: a lease with an owner token that keeps
turns of one session from overlapping across processes, and never hangs a session.

Two stores (two connection pools) stand for two server processes; the models are fakes. The
two-process version, with real servers and ``kill -9``, is tests/test_replicas.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import redis

from companion import Action, Category, Pipeline, ResourceCatalogue, Role, SessionInfo, Turn
from companion.config import GenerationConfig
from companion.errors import Cancelled, Unavailable
from companion.protocols import ChatMessage, LockingSessionStore, ShouldStop
from companion.server.settings import ServerSettings
from companion.sessions import RedisSessionStore, new_session_id

from .fakes import FakeGuard


def NEVER() -> bool:  # should_stop of a call that is never cancelled
    return False


def _pair(text: str) -> list[Turn]:
    now = time.time()
    return [
        Turn(Role.USER, text, now, Category.NONE, Action.ANSWERED, {}),
        Turn(Role.ASSISTANT, f"re: {text}", now, Category.NONE, Action.ANSWERED, {}),
    ]


def _two_stores(
    url: str, lease: float
) -> Iterator[tuple[RedisSessionStore, RedisSessionStore, str]]:
    one, two = (RedisSessionStore(url, lock_seconds=lease, lock_wait_seconds=3) for _ in "12")
    sid = new_session_id()
    one.create(SessionInfo(sid, "en-US", time.time()))
    yield one, two, sid
    one.close()
    two.close()


@pytest.fixture
def stores(redis_server) -> Iterator[tuple[RedisSessionStore, RedisSessionStore, str]]:
    """Two stores on one Redis with a 0.3 s lease and a 3 s wait, and a session in them."""
    yield from _two_stores(redis_server.url, 0.3)


@pytest.fixture
def long_lease(redis_server) -> Iterator[tuple[RedisSessionStore, RedisSessionStore, str]]:
    """The same with a 10 s lease (the default), for turns held up by a test."""
    yield from _two_stores(redis_server.url, 10)


def test_the_redis_store_is_a_locking_store_and_the_others_are_not(stores):
    from companion.sessions import InMemorySessionStore

    assert isinstance(stores[0], LockingSessionStore)
    assert not isinstance(InMemorySessionStore(), LockingSessionStore)


def test_a_dead_holders_lock_lapses_after_its_lease(stores):
    one, two, sid = stores
    one.lock_turn(sid, NEVER)  # taken and never given back: its process died
    t0 = time.monotonic()
    lock = two.lock_turn(sid, NEVER)
    assert 0.2 < time.monotonic() - t0 < 1.5
    assert 200 < lock.waited_ms < 1500
    lock.release()


def test_a_waiter_gives_up_after_the_wait_and_stops_when_cancelled(redis_server, stores):
    one, _, sid = stores
    impatient = RedisSessionStore(redis_server.url, lock_seconds=5, lock_wait_seconds=0.3)
    held = impatient.lock_turn(sid, NEVER)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="another turn of this session"):
        impatient.lock_turn(sid, NEVER)
    assert 0.25 < time.monotonic() - t0 < 1.0
    cancel_at = time.monotonic() + 0.1
    with pytest.raises(Cancelled):
        one.lock_turn(sid, lambda: time.monotonic() > cancel_at)
    held.release()
    impatient.lock_turn(sid, NEVER).release()  # free again at once
    impatient.close()


def test_keep_renews_the_lease_while_a_turn_runs(stores):
    one, two, sid = stores
    lock = one.lock_turn(sid, NEVER)
    stop = threading.Event()
    got: list[float] = []

    def other() -> None:  # waits the whole time the first holds on
        got.append(two.lock_turn(sid, stop.is_set).waited_ms)

    waiter = threading.Thread(target=other)
    waiter.start()
    deadline = time.monotonic() + 1.2  # four leases
    while time.monotonic() < deadline:
        lock.keep()
        time.sleep(0.02)
    assert not got  # still waiting: the lease never lapsed
    lock.release()
    waiter.join(5)
    assert got and got[0] > 1000


def test_a_lapsed_lock_stores_nothing_and_cannot_free_its_successor(stores, redis_server):
    one, two, sid = stores
    late = one.lock_turn(sid, NEVER)
    time.sleep(0.5)  # the lease (0.3 s) lapsed: a paused process, a stalled model
    with pytest.raises(Unavailable, match="outlived its session lock"):
        one.append(sid, _pair("late"), lock=late)  # fenced: the token is no longer the key's
    successor = two.lock_turn(sid, NEVER)
    with pytest.raises(Unavailable, match="outlived"):
        late.keep()
    late.release()  # only the owner's token deletes the key: this leaves the successor's
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.get(two.lock_key(sid)) == successor.token
    assert [t.index for t in two.append(sid, _pair("on time"), lock=successor)] == [0, 1]
    successor.release()
    assert raw.get(two.lock_key(sid)) is None
    assert [t.text for t in two.history(sid)] == ["on time", "re: on time"]
    raw.close()


def test_delete_removes_a_held_lock_and_the_turn_then_stores_nothing(stores, redis_server):
    one, _, sid = stores
    lock = one.lock_turn(sid, NEVER)
    assert one.delete(sid)
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert list(raw.scan_iter(match=f"*{sid}*")) == []
    raw.close()
    from companion import SessionNotFound

    with pytest.raises(SessionNotFound):
        one.append(sid, _pair("after erasure"), lock=lock)


def test_lock_times_are_validated():
    for name in ("lock_seconds", "lock_wait_seconds"):
        with pytest.raises(ValueError, match=name):
            RedisSessionStore(**{name: 0})
        with pytest.raises(ValueError, match=f"redis_{name}"):
            ServerSettings(**{f"redis_{name}": 0})


# --- the pipeline on two stores: turns of one session one at a time -----------------------


class GatedGenerator:
    """Replies with the number of history turns it was given; waits for ``gate`` first and
    sets ``started`` when called (a hand-written fake: what a slow model looks like)."""

    context_window = 10_000

    def __init__(self, gate: threading.Event | None = None, pause: float = 0.0) -> None:
        self.gate, self.pause = gate, pause
        self.started = threading.Event()
        self.seen: list[int] = []

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def stream(
        self, messages: Sequence[ChatMessage], config: GenerationConfig, should_stop: ShouldStop
    ) -> Iterator[str]:
        self.seen.append(len(messages) - 2)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.pause)
        yield f"I saw {len(messages) - 2} turns."


def _pipeline(store: RedisSessionStore, generator: GatedGenerator) -> Pipeline:
    return Pipeline(FakeGuard(), generator, store, ResourceCatalogue.load())


def test_a_turn_on_another_process_waits_and_then_sees_the_first_turn(long_lease):
    one, two, sid = long_lease
    gate = threading.Event()
    first, second = GatedGenerator(gate), GatedGenerator()
    replies: dict[str, str] = {}

    def run(name: str, pipeline: Pipeline, text: str, request_id: str | None = None) -> None:
        replies[name] = pipeline.turn(sid, text, request_id=request_id).text

    a = threading.Thread(target=run, args=("a", _pipeline(one, first), "first"))
    a.start()
    assert first.started.wait(5)  # a holds the session and is generating
    b = threading.Thread(target=run, args=("b", _pipeline(two, second), "second"))
    b.start()
    time.sleep(0.5)
    assert not second.started.is_set()  # b waits for the session: it has not read the history
    gate.set()
    a.join(5)
    b.join(5)
    assert replies == {"a": "I saw 0 turns.", "b": "I saw 2 turns."}
    assert [t.text for t in two.history(sid)] == [
        "first", "I saw 0 turns.", "second", "I saw 2 turns.",
    ]  # fmt: skip


def test_a_retry_that_waited_for_its_first_try_replays_it_without_generating(long_lease):
    one, two, sid = long_lease
    gate = threading.Event()
    first, retry = GatedGenerator(gate), GatedGenerator()
    replies: list[tuple[str, int | None]] = []

    def run(pipeline: Pipeline) -> None:
        r = pipeline.turn(sid, "hello", request_id="req-1")
        replies.append((r.text, r.turn_index))

    a = threading.Thread(target=run, args=(_pipeline(one, first),))
    a.start()
    assert first.started.wait(5)
    b = threading.Thread(target=run, args=(_pipeline(two, retry),))
    b.start()
    time.sleep(0.2)
    gate.set()
    a.join(5)
    b.join(5)
    assert replies == [("I saw 0 turns.", 1)] * 2
    assert retry.seen == []  # the retry never reached the model
    assert len(two.history(sid)) == 2


def test_a_turn_that_outlives_its_lease_stores_nothing(stores):
    one, _, sid = stores
    slow = GatedGenerator(pause=0.6)  # no token for two leases: the lock lapses
    with pytest.raises(Unavailable, match="outlived its session lock"):
        _pipeline(one, slow).turn(sid, "hello")
    assert one.history(sid) == []
