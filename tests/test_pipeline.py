"""The guarded turn, with fakes: ordering, fail-closed behaviour, storage and errors."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from companion import (
    Action,
    Cancelled,
    Category,
    InvalidArgument,
    Role,
    SessionInfo,
    SessionNotFound,
    TextDelta,
    TurnDone,
)
from companion.sessions import new_session_id

from .fakes import FakeGenerator, FakeGuard


def _session(pipeline, locale: str = "en-GB") -> str:
    sid = new_session_id()
    pipeline.store.create(SessionInfo(sid, locale, time.time()))
    return sid


def test_benign_message_is_answered_by_the_model(make_pipeline):
    p = make_pipeline(generator=FakeGenerator(["That sounds stressful."]))
    sid = _session(p)
    reply = p.turn(sid, "I feel anxious about exams")
    assert (reply.text, reply.category, reply.action) == (
        "That sounds stressful.",
        Category.NONE,
        Action.ANSWERED,
    )
    assert reply.resources == ()
    assert [t.role for t in p.store.history(sid)] == [Role.USER, Role.ASSISTANT]


def test_input_guard_fires_before_generation_and_generator_is_never_called(make_pipeline):
    gen = FakeGenerator([])  # any call raises
    p = make_pipeline(generator=gen)
    sid = _session(p, "en-GB")
    reply = p.turn(sid, "CRISIS message")
    assert gen.calls == []
    assert reply.category is Category.CRISIS and reply.action is Action.REDIRECTED
    assert "116 123" in reply.text  # Samaritans, from the GB catalogue entry
    assert any(r.name == "Samaritans" for r in reply.resources)
    assert reply.output_verdict is None


def test_crisis_outranks_medical(make_pipeline):
    p = make_pipeline(generator=FakeGenerator([]))
    reply = p.turn(_session(p), "MEDICAL and CRISIS")
    assert reply.category is Category.CRISIS


def test_medical_request_gets_the_medical_redirect(make_pipeline):
    p = make_pipeline(generator=FakeGenerator([]))
    reply = p.turn(_session(p, "en-US"), "MEDICAL dose question")
    assert reply.category is Category.MEDICAL
    assert "doctor or pharmacist" in reply.text


def test_output_guard_fires_and_generated_text_is_discarded(make_pipeline):
    p = make_pipeline(generator=FakeGenerator(["take MEDICAL 50 mg"]))
    sid = _session(p)
    reply = p.turn(sid, "hello")
    assert reply.action is Action.REDIRECTED and reply.category is Category.MEDICAL
    assert "50 mg" not in reply.text
    stored = p.store.history(sid)
    assert all("50 mg" not in t.text for t in stored)
    assert stored[1].text == reply.text


def test_stream_withholds_when_output_guard_fires(make_pipeline):
    p = make_pipeline(generator=FakeGenerator(["CRISIS method"]))
    events = list(p.stream(_session(p), "hello"))
    assert not any(isinstance(e, TextDelta) for e in events)  # checked before release
    done = events[-1]
    assert isinstance(done, TurnDone) and done.withheld
    assert done.reply.category is Category.CRISIS


@pytest.mark.parametrize("raise_on", [Role.USER, Role.ASSISTANT])
def test_guard_error_fails_closed_with_the_safe_reply(make_pipeline, raise_on):
    gen = FakeGenerator(["an unchecked reply"])
    p = make_pipeline(guard=FakeGuard(raise_on=raise_on), generator=gen)
    reply = p.turn(_session(p, "en-US"), "hello")
    assert reply.action is Action.REDIRECTED and reply.category is Category.CRISIS
    assert "unchecked" not in reply.text
    assert "988" in reply.text
    assert reply.verdict is not None and reply.verdict.error == "RuntimeError"
    if raise_on is Role.USER:
        assert gen.calls == []


def test_input_guard_sees_recent_user_turns_as_context(make_pipeline):
    guard = FakeGuard()
    p = make_pipeline(guard=guard, generator=FakeGenerator(["a", "b", "c", "d"]))
    sid = _session(p)
    for text in ["one", "two", "three", "four"]:
        p.turn(sid, text)
    user_calls = [c for c in guard.calls if c[1] is Role.USER]
    assert user_calls[-1] == ("four", Role.USER, ("one", "two", "three"))
    assert all(c[2] == () for c in guard.calls if c[1] is Role.ASSISTANT)


def test_history_is_sent_to_the_model_in_order(make_pipeline):
    gen = FakeGenerator(["first reply", "second reply"])
    p = make_pipeline(generator=gen)
    sid = _session(p)
    p.turn(sid, "first")
    p.turn(sid, "second")
    roles = [(m["role"], m["content"]) for m in gen.calls[1]]
    assert roles[0][0] == "system"
    assert roles[1:] == [("user", "first"), ("assistant", "first reply"), ("user", "second")]


def test_cancelled_turn_stores_nothing(make_pipeline):
    state = {"stop": False}

    def on_token(i: int) -> None:
        if i == 2:
            state["stop"] = True

    gen = FakeGenerator(["one two three four five"], on_token=on_token)
    p = make_pipeline(generator=gen)
    sid = _session(p)
    with pytest.raises(Cancelled):
        p.turn(sid, "hello", should_stop=lambda: state["stop"])
    assert p.store.history(sid) == []


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("   \n", "empty"), ("x" * 5000, "limit"), (None, "string")],
)
def test_bad_text_is_rejected_and_nothing_is_stored(make_pipeline, text, match):
    p = make_pipeline(generator=FakeGenerator([]))
    sid = _session(p)
    with pytest.raises(InvalidArgument, match=match):
        p.turn(sid, text)
    assert p.store.history(sid) == []


def test_unknown_and_malformed_session_ids(make_pipeline):
    p = make_pipeline(generator=FakeGenerator([]))
    with pytest.raises(SessionNotFound):
        p.turn(new_session_id(), "hello")
    with pytest.raises(InvalidArgument):
        p.turn("../../etc/passwd", "hello")


def test_turn_log_line_has_numbers_but_never_text(make_pipeline):
    secret_in, secret_out = "my very private worry", "a very private reply"
    p = make_pipeline(generator=FakeGenerator([secret_out]))
    sid = _session(p)
    with capture_logs() as logs:
        p.turn(sid, secret_in)
    turn = [e for e in logs if e["event"] == "turn"]
    assert len(turn) == 1
    line = turn[0]
    assert line["session_id"] == sid and line["message_chars"] == len(secret_in)
    assert line["reply_chars"] == len(secret_out) and "input_guard_ms" in line
    dumped = repr(logs)
    assert secret_in not in dumped and secret_out not in dumped
