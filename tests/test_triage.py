"""Three-level triage with fakes: check-ins, their answers, quiet periods, what the model sees,
and generated replies that raise risk topics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from companion import Action, Category, PipelineConfig, Role, SessionInfo
from companion.safety import LinearHead, Policy, SafetyClassifier
from companion.safety.topics import raises_risk_topic
from companion.sessions import new_session_id

from .fakes import FakeGenerator, FakeGuard


def _session(pipeline, locale: str = "en-GB") -> str:
    sid = new_session_id()
    pipeline.store.create(SessionInfo(sid, locale, time.time()))
    return sid


def test_possible_risk_gets_the_fixed_check_in_and_the_model_is_not_called(make_pipeline):
    gen = FakeGenerator([])
    p = make_pipeline(generator=gen)
    sid = _session(p, "en-GB")
    reply = p.turn(sid, "sometimes i wish i could disappear RISK")
    assert (reply.action, reply.category) == (Action.CHECKED_IN, Category.CRISIS)
    assert "Are you having thoughts like that?" in reply.text
    assert [r.name for r in reply.resources] == ["Samaritans"]  # one 24/7 line, the region's
    assert "Samaritans" in reply.text and gen.calls == []
    assert p.store.history(sid)[-1].action is Action.CHECKED_IN  # stored with the turn


def test_the_next_message_is_read_as_the_answer_to_the_check_in(make_pipeline):
    guard = FakeGuard()
    p = make_pipeline(guard=guard, generator=FakeGenerator(["Being that tired is hard."]))
    sid = _session(p)
    check_in = p.turn(sid, "what's the point RISK").text
    reply = p.turn(sid, "no, nothing like that, i'm just exhausted")
    assert guard.answers == ["", check_in, ""]  # the answer, then the output check
    assert reply.action is Action.ANSWERED


def test_a_yes_to_the_check_in_redirects(make_pipeline):
    p = make_pipeline(guard=FakeGuard(), generator=FakeGenerator([]))
    sid = _session(p)
    p.turn(sid, "everyone would be better off RISK")
    reply = p.turn(sid, "yes. CRISIS")
    assert (reply.action, reply.category) == (Action.REDIRECTED, Category.CRISIS)
    assert "Samaritans" in reply.text


def test_an_unsure_answer_redirects_instead_of_asking_twice(make_pipeline):
    p = make_pipeline(generator=FakeGenerator([]))
    sid = _session(p)
    p.turn(sid, "i want to disappear RISK")
    reply = p.turn(sid, "idk maybe RISK")
    assert reply.action is Action.REDIRECTED


def test_after_a_clear_no_check_ins_are_quiet_unless_the_risk_rises(make_pipeline):
    p = make_pipeline(
        generator=FakeGenerator(["reply"] * 3), config=PipelineConfig(check_in_quiet_turns=2)
    )
    sid = _session(p)
    assert p.turn(sid, "i want to vanish RISK6").action is Action.CHECKED_IN
    assert p.turn(sid, "no no, just tired").action is Action.ANSWERED
    assert p.turn(sid, "ugh so done with it RISK5").action is Action.ANSWERED  # held back
    assert p.turn(sid, "i mean it RISK8").action is Action.CHECKED_IN  # the risk rose


def test_the_quiet_period_ends_and_never_holds_back_a_redirect(make_pipeline):
    p = make_pipeline(
        generator=FakeGenerator(["reply"] * 2), config=PipelineConfig(check_in_quiet_turns=1)
    )
    sid = _session(p)
    p.turn(sid, "i want to vanish RISK6")
    p.turn(sid, "no no, just tired")
    assert p.turn(sid, "i have a plan CRISIS").action is Action.REDIRECTED
    assert p.turn(sid, "whatever RISK5").action is Action.CHECKED_IN  # the quiet turn is spent


def test_the_state_survives_a_new_pipeline_on_the_same_store(make_pipeline):
    first = make_pipeline(generator=FakeGenerator([]))
    sid = _session(first)
    first.turn(sid, "i want to vanish RISK")
    from companion import Pipeline

    second = Pipeline(FakeGuard(), FakeGenerator([]), first.store, first.catalogue)
    assert second.turn(sid, "idk RISK").action is Action.REDIRECTED


def test_redirected_and_checked_in_exchanges_never_reach_the_model(make_pipeline):
    gen = FakeGenerator(["You're welcome.", "Glad to hear it."])
    p = make_pipeline(generator=gen)
    sid = _session(p)
    p.turn(sid, "I have the pills here CRISIS")
    p.turn(sid, "Thank you, that helps.")
    p.turn(sid, "i want to disappear RISK")
    p.turn(sid, "no, it was just a bad day")
    seen = [m["content"] for m in gen.calls[-1]]
    assert not any("CRISIS" in c or "RISK" in c or "Samaritans" in c for c in seen)
    assert "Thank you, that helps." in seen and "You're welcome." in seen


class _ZeroEncoder:
    name = "zero"

    def encode(self, texts):
        return np.zeros((len(texts), 4), dtype=np.float32)


def _topic_guard() -> SafetyClassifier:
    """The real classifier on a constant encoder and a zero head: every score is 0.5, under
    the 0.9 thresholds, so only the risk-topic rule can fire."""
    labels = ("crisis", "medical", "risk")
    zeros = (np.zeros((4, 3), np.float32), np.zeros(3, np.float32))
    policy = Policy(
        "topic-test",
        labels=labels,
        thresholds={r: dict.fromkeys(labels, 0.9) for r in ("user", "assistant")},
        encoder="zero",
        user_features="newest",
    )
    return SafetyClassifier(
        _ZeroEncoder(), LinearHead({Role.USER: zeros, Role.ASSISTANT: zeros}, labels), policy
    )


@pytest.mark.parametrize(
    "generated",
    [
        "Thanks. How long have you been feeling like suicide might be the best option?",
        "Have you ever thought about ending your life?",
        "It's okay to want to hurt yourself sometimes.",
    ],
)
def test_a_generated_reply_raising_risk_topics_is_withheld_for_the_check_in(
    make_pipeline, generated
):
    p = make_pipeline(guard=_topic_guard(), generator=FakeGenerator([generated]))
    sid = _session(p)
    reply = p.turn(sid, "Thank you, that helps.")
    assert reply.action is Action.CHECKED_IN and generated not in reply.text
    assert reply.output_verdict is not None and reply.output_verdict.scores["risk_topic"] == 1.0
    assert generated not in [t.text for t in p.store.history(sid)]


def test_a_reply_without_risk_topics_is_released(make_pipeline):
    p = make_pipeline(guard=_topic_guard(), generator=FakeGenerator(["That sounds like a lot."]))
    reply = p.turn(_session(p), "Long week.")
    assert (reply.action, reply.text) == (Action.ANSWERED, "That sounds like a lot.")


@pytest.mark.parametrize(
    ("text", "raised"),
    [
        ("Thanks. How long have you been feeling like suicide might be the best option?", True),
        ("Please don't hurt yourself.", True),
        ("do you w4nt to die?", True),
        ("It sounds like you took a big step today.", False),
        ("Cut yourself some slack, that week sounds exhausting.", False),
        ("This deadline sounds like it's killing you.", False),
        ("Cutting back on caffeine after lunch can help with sleep.", False),
    ],
)
def test_risk_topic_rule(text, raised):
    assert raises_risk_topic(text) is raised
