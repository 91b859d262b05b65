"""Two real ``companion serve`` processes on the embedded models and one real Redis (issue 17,
item 2): one conversation across both, concurrent turns, and ``kill -9`` of one.

The prompt a replica assembled is read from its own ``turn`` log lines (``history_read``:
stored turns it read; ``context_turns``: those the model saw; counts, never text). The fake
model version with exact context digests and many more turns is tests/test_replicas.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from companion import Action, Role, Turn

from .replicas import Replica, start_replica

pytestmark = pytest.mark.slow

SETTINGS = {"max_new_tokens": "8", "do_sample": "false", "redis_lock_seconds": "3"}


@pytest.fixture
def replicas(redis_server, tmp_path):
    pair = [start_replica("real", n, redis_server.url, tmp_path, **SETTINGS) for n in "ab"]
    try:
        for r in pair:
            r.wait_ready(900)  # both load the models at once on a busy machine
        yield pair
    finally:
        for r in pair:
            r.stop()


def _turn_lines(session_id: str, *replicas: Replica) -> dict[int, dict]:
    """The replicas' ``turn`` log lines of one session, by the index of the stored reply."""
    lines = [e for r in replicas for e in r.events("turn")]
    return {e["turn_index"]: e for e in lines if e["session_id"] == session_id}


def _assert_serialised(turns: list[Turn], lines: dict[int, dict]) -> None:
    """Gapless pairs, and each generated reply's prompt held every answered turn before it."""
    assert [t.index for t in turns] == list(range(len(turns)))
    assert [t.role for t in turns] == [Role.USER, Role.ASSISTANT] * (len(turns) // 2)
    for i in range(1, len(turns), 2):
        answered_before = sum(t.action is Action.ANSWERED for t in turns[: i - 1])
        assert lines[i]["history_read"] == i - 1, i
        if turns[i].action is Action.ANSWERED:
            assert lines[i]["context_turns"] == answered_before, i


def test_two_real_replicas_share_one_conversation_serialise_turns_and_survive_kill_9(replicas):
    a, b = replicas
    ca, cb = a.client(), b.client(retries=8, backoff=0.5)

    # One conversation, alternating; the crisis turn is redirected by the real guard on a,
    # and b's next prompt leaves it out, as one process would.
    sid = ca.create_session(locale="en-GB")
    script = [
        (ca, "I had a long day at work."),
        (cb, "My manager keeps adding tasks."),
        (ca, "I want to kill myself."),
        (cb, "Thank you, I will call them."),
    ]
    actions = [client.send(sid, text).action for client, text in script]
    assert actions == ["answered", "answered", "redirected", "answered"]
    from_a, from_b = ca.history(sid), cb.history(sid)
    assert [(t.index, t.text, t.action) for t in from_a] == [
        (t.index, t.text, t.action) for t in from_b
    ]
    lines = _turn_lines(sid, a, b)
    assert [lines[i]["context_turns"] for i in (1, 3, 7)] == [0, 2, 4]  # 5 was not generated
    _assert_serialised(from_b, lines)

    # Concurrent turns on one session from both replicas: one at a time, each seeing the rest.
    busy = ca.create_session()
    start = threading.Barrier(4)

    def send(k: int):
        start.wait(30)
        return (ca, cb)[k % 2].send(busy, f"My sister visited on day {k} and we watched a film.")

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(send, range(4)))
    # The messages pass the input guard; a reply the output guard withholds is stored as
    # redirected (policy 3.4's reply check flags reflective replies often: issue 14), so
    # require a generated reply, not all four (the order, hence each prompt, differs from run
    # to run). Serialisation is checked on every turn, generated or not.
    assert any(r.action == "answered" for r in replies), [r.action for r in replies]
    turns = cb.history(busy)
    assert sorted(r.turn_index for r in replies) == [1, 3, 5, 7]
    for k, r in enumerate(replies):
        assert (
            turns[r.turn_index - 1].text == f"My sister visited on day {k} and we watched a film."
        )
        assert turns[r.turn_index].text == r.text
    _assert_serialised(turns, _turn_lines(busy, a, b))

    # kill -9 of a with a turn in flight: nothing acknowledged is lost, the cut-off turn is
    # stored once when retried on b, and b's turns wait at most a's lease (3 s) for the lock.
    acknowledged = [(t.index, t.text) for t in cb.history(sid)]
    cut_off: list[BaseException] = []

    def doomed() -> None:
        try:
            a.client(retries=0).send(sid, "Sorry, where was I?", request_id="cut-off")
        except BaseException as exc:  # the kill ends the call one way or another
            cut_off.append(exc)

    caller = threading.Thread(target=doomed)
    caller.start()
    time.sleep(0.5)  # the turn is queued or generating on a
    a.kill()
    caller.join(30)
    after_kill = cb.history(sid)
    assert [(t.index, t.text) for t in after_kill][: len(acknowledged)] == acknowledged
    retried = cb.send(sid, "Sorry, where was I?", request_id="cut-off")
    final = cb.history(sid)
    assert [t.text for t in final].count("Sorry, where was I?") == 1
    assert final[retried.turn_index].text == retried.text
    nxt = cb.send(sid, "Anyway, I feel a bit calmer now.")
    assert nxt.turn_index == len(final) + 1
    final = cb.history(sid)
    _assert_serialised(final, _turn_lines(sid, a, b))
    after = [i for i in _turn_lines(sid, b).values() if i["turn_index"] > len(acknowledged)]
    assert after and max(e["lock_wait_ms"] for e in after) < 3000 + 1000
