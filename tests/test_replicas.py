"""Two replicas, one conversation (issue 17, item 2): two server processes on one real Redis.

The servers are real processes running the real server and the Redis store
(``tests/replica_server.py``); only the models are fakes, for three reasons: the shipped guard
(policy 3.4, crisis and medical only) never checks in on a user message, so the check-in state
could not be driven through it; the fake generator's reply names the context it was given, so
every stored reply proves which turns its replica saw; and turns take milliseconds, so dozens
of them can race. ``test_replicas_real.py`` runs a replica pair on the embedded models.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from companion import Action, Role, Turn
from companion.errors import Unavailable

from .replicas import Replica, expected_echo, start_replica

LEASE = "2"  # seconds a dead replica's turn lock outlives it (the default is 10)


@pytest.fixture
def pair(redis_server, tmp_path):
    """Start replicas ``a`` and ``b`` on one Redis, pausing ``a_word`` and ``b_word`` seconds
    before each generated word; ``a`` marks its generations (``generating-<n>``)."""
    started: list[Replica] = []
    url = redis_server.url

    def start(a_word: str = "0.15", b_word: str = "0") -> tuple[Replica, Replica]:
        lease = {"redis_lock_seconds": LEASE}
        a = start_replica(
            "fake", "a", url, tmp_path, test_token_seconds=a_word,
            test_marker_dir=str(tmp_path), **lease,
        )  # fmt: skip
        b = start_replica("fake", "b", url, tmp_path, test_token_seconds=b_word, **lease)
        started.extend([a, b])
        for r in (a, b):
            r.wait_ready(60)
        return a, b

    yield start
    for r in started:
        r.stop()


def assert_serialised(turns: list[Turn]) -> None:
    """Gapless indexes, each user turn followed by its reply, and each reply generated from
    a prompt that held every model-visible turn stored before it."""
    assert [t.index for t in turns] == list(range(len(turns)))
    assert [t.role for t in turns] == [Role.USER, Role.ASSISTANT] * (len(turns) // 2)
    for i in range(0, len(turns), 2):
        if turns[i + 1].action is Action.ANSWERED:
            assert turns[i + 1].text == expected_echo(turns[:i]), f"turn {i + 1}"


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def test_a_conversation_alternating_between_replicas_keeps_its_whole_context(pair):
    a, b = pair()
    ca, cb = a.client(), b.client()
    sid = ca.create_session(locale="en-GB")
    for n in range(6):
        side = (ca, cb)[n % 2]
        reply = side.send(sid, f"message {n}")
        assert reply.turn_index == 2 * n + 1
        assert reply.text == f"context {2 * n} " + reply.text.split()[-1]  # every earlier turn
    from_a, from_b = ca.history(sid), cb.history(sid)
    assert [(t.index, t.role, t.text) for t in from_a] == [
        (t.index, t.role, t.text) for t in from_b
    ]
    assert [t.text for t in from_a[::2]] == [f"message {n}" for n in range(6)]
    assert_serialised(from_b)
    # Each replica's own log agrees: it read the other's turns at the start of its turns.
    assert [e["history_read"] for e in b.events("turn")] == [2, 6, 10]
    assert [e["context_turns"] for e in a.events("turn")] == [0, 4, 8]


def test_a_check_in_asked_on_one_replica_is_answered_on_the_other(pair):
    a, b = pair()
    ca, cb = a.client(), b.client()
    sid, control = ca.create_session(), cb.create_session()
    assert ca.send(sid, "what is the point RISK6").action == "checked_in"
    # On b, the same uncertain message is the answer to a's question: still unsure after
    # asking directly is a yes, so it redirects. Sent cold, it only checks in.
    assert cb.send(sid, "maybe RISK5").action == "redirected"
    assert cb.send(control, "maybe RISK5").action == "checked_in"
    answered = [e["answering_check_in"] for e in b.events("turn")]
    assert answered == [True, False]
    # A clear no on b starts a quiet period that a sees: a weaker risk is not asked again.
    assert cb.send(control, "no, nothing like that").action == "answered"
    assert ca.send(control, "tired RISK4").action == "answered"
    assert ca.send(control, "really bad RISK9").action == "checked_in"  # the risk rose
    assert [e["check_in_held_back"] for e in a.events("turn")] == [False, True, False]


def test_concurrent_turns_on_one_session_from_both_replicas_are_serialised(pair):
    a, b = pair(a_word="0.02", b_word="0.02")
    clients = [a.client(), b.client()]
    sid = clients[0].create_session()
    n = 16
    start = threading.Barrier(n)

    def send(k: int):
        start.wait(10)
        return clients[k % 2].send(sid, f"message {k}")

    with ThreadPoolExecutor(n) as pool:
        replies = list(pool.map(send, range(n)))
    turns = clients[1].history(sid)
    assert len(turns) == 2 * n
    assert sorted(t.text for t in turns[::2]) == sorted(f"message {k}" for k in range(n))
    assert sorted(r.turn_index for r in replies) == list(range(1, 2 * n, 2))  # none twice
    for k, r in enumerate(replies):
        assert turns[r.turn_index - 1].text == f"message {k}"  # its pair, intact
        assert turns[r.turn_index].text == r.text
    assert_serialised(turns)
    assert {len(r.events("turn")) for r in (a, b)} == {n // 2}  # both replicas took turns


def test_kill_9_of_a_replica_mid_conversation_loses_no_acknowledged_turn(pair, tmp_path):
    a, b = pair(b_word="0.05")
    ca, cb = a.client(retries=0), b.client(retries=8, backoff=0.2)
    sid = cb.create_session()
    acked: list[tuple[float, int, str, str]] = []  # (when, index of the reply, message, reply)
    lost: list[BaseException] = []
    stop = threading.Event()

    def talk(client, name: str) -> None:
        for n in range(200):
            if stop.is_set():
                return
            text = f"{name} message {n}"
            try:
                reply = client.send(sid, text, request_id=f"{name}-{n}")
            except Unavailable as exc:  # only a's last turn, cut off by the kill
                lost.append(exc)
                return
            acked.append((time.monotonic(), reply.turn_index, text, reply.text))

    threads = [threading.Thread(target=talk, args=(c, name)) for c, name in ((ca, "a"), (cb, "b"))]
    for t in threads:
        t.start()
    _wait_for(tmp_path / "generating-4", 30)  # a's fourth turn is being generated
    a.kill()
    killed = time.monotonic()
    deadline = killed + 20
    while sum(when > killed for when, *_ in acked) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # b goes on talking
    stop.set()
    for t in threads:
        t.join(60)
    assert len(lost) == 1, lost  # a's client saw its in-flight turn fail, and nothing else
    assert [x[2] for x in acked if x[2].startswith("a ")] == [f"a message {n}" for n in range(3)]
    after = [x for x in acked if x[0] > killed]
    assert len(after) >= 3 and all(x[2].startswith("b ") for x in after)
    # a died holding the session's lock: b's next turn waited for the lease to lapse (2 s
    # after a took it), then went on at once; no turn hung on the dead replica's lock.
    first = min(after)
    assert first[0] - killed < float(LEASE) + 1.0
    waited = {e["turn_index"]: e["lock_wait_ms"] for e in b.events("turn")}
    assert waited[first[1]] > 1000, waited
    turns = cb.history(sid)
    for _, index, text, reply in acked:  # every acknowledged turn, where it was reported
        assert (turns[index - 1].text, turns[index].text) == (text, reply)
    assert "a message 3" not in [t.text for t in turns]  # the cut-off turn was never stored
    assert len(turns) == 2 * len(acked)
    assert_serialised(turns)
    # The cut-off message, retried on b under its request id, is stored once, after the rest.
    retried = cb.send(sid, "a message 3", request_id="a-3")
    assert retried.turn_index == len(turns) + 1
    assert retried.text == expected_echo(turns)
    assert cb.send(sid, "a message 3", request_id="a-3").turn_index == retried.turn_index
    assert len(cb.history(sid)) == len(turns) + 2
