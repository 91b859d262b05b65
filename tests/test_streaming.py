"""Check-before-release streaming, with fakes: no generated text leaves the pipeline unchecked."""

from __future__ import annotations

import time

import pytest

from companion import Action, Cancelled, Category, Role, SessionInfo, TextDelta, TurnDone, Withheld
from companion._release import ReleaseBuffer
from companion.sessions import new_session_id

from .fakes import FakeGenerator, FakeGuard


class LoggingGuard(FakeGuard):
    """A FakeGuard that writes each reply check into a shared event log; it raises on the
    ``raise_at``-th reply check when set."""

    def __init__(self, log: list[tuple[str, str]], raise_at: int | None = None) -> None:
        super().__init__()
        self.log = log
        self.raise_at = raise_at
        self.reply_checks = 0

    def classify(self, text, role=Role.USER, context=(), last_assistant=""):
        if Role(role) is Role.ASSISTANT:
            self.reply_checks += 1
            self.log.append(("check", text))
            if self.reply_checks == self.raise_at:
                raise RuntimeError("guard backend down")
        return super().classify(text, role, context, last_assistant)


class CountingGenerator(FakeGenerator):
    """Counts the words it actually produced and whether it was closed early."""

    def __init__(self, responses):
        super().__init__(responses)
        self.produced = 0
        self.closed = False

    def stream(self, messages, config, should_stop=None):
        inner = super().stream(messages, config, should_stop)
        try:
            for word in inner:
                self.produced += 1
                yield word
        except GeneratorExit:
            self.closed = True
            raise


def _session(pipeline, locale: str = "en-US") -> str:
    sid = new_session_id()
    pipeline.store.create(SessionInfo(sid, locale, time.time()))
    return sid


def _run(pipeline, sid, text, log, should_stop=None):
    events = []
    for event in pipeline.stream(sid, text, should_stop):
        if isinstance(event, TextDelta):
            log.append(("release", event.text))
        events.append(event)
    return events


def _assert_checked_before_release(log):
    """Every released unit was read by the guard, with everything released before it, in a
    check that came before the release."""
    shown = ""
    for i, (kind, text) in enumerate(log):
        if kind != "release":
            continue
        checks = [t for k, t in log[:i] if k == "check"]
        assert checks and checks[-1].startswith(shown + text), (shown, text, checks[-1:])
        shown += text


SAFE = "I hear you. That sounds like a hard week. Have you had any rest?"


def test_a_flagged_sentence_after_safe_ones_is_never_released(make_pipeline):
    log: list[tuple[str, str]] = []
    gen = CountingGenerator([f"{SAFE} Take MEDICAL 50 mg twice a day. And then more words here."])
    p = make_pipeline(guard=LoggingGuard(log), generator=gen)
    sid = _session(p)
    events = _run(p, sid, "hello", log)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == SAFE + " "
    assert all("50 mg" not in d and "MEDICAL" not in d for d in deltas)
    assert events[-2:] == [Withheld(Category.MEDICAL), events[-1]]
    done = events[-1]
    assert isinstance(done, TurnDone) and done.withheld
    assert done.reply.action is Action.REDIRECTED and "pharmacist" in done.reply.text
    assert [t.text for t in p.store.history(sid)][1] == done.reply.text
    assert log[-1] == (
        "check",
        "I hear you. That sounds like a hard week. Have you had any rest? "
        "Take MEDICAL 50 mg twice a day. And then more words here.",
    )  # all of it
    _assert_checked_before_release(log)


class FirstSentenceGuard(LoggingGuard):
    """Flags the reply when it is exactly its first sentence (as a short prefix can read as
    advice that the whole reply is not)."""

    def classify(self, text, role=Role.USER, context=(), last_assistant=""):
        v = super().classify(text, role, context, last_assistant)
        if Role(role) is Role.ASSISTANT and text == "It's normal anxiety. ":
            return FakeGuard().classify("MEDICAL", role)
        return v


def test_a_unit_that_fires_alone_is_held_until_the_longer_reply_passes(make_pipeline):
    log: list[tuple[str, str]] = []
    reply = "It's normal anxiety. Lots of people feel it before exams. Breathe."
    p = make_pipeline(guard=FirstSentenceGuard(log), generator=CountingGenerator([reply]))
    events = _run(p, _session(p), "I feel anxious about my exams", log)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas[0] == "It's normal anxiety. " and len(deltas) == 3
    assert log[1] == ("check", "It's normal anxiety. Lots of people feel it before exams. ")
    assert log.index(("release", "It's normal anxiety. ")) > 1  # only after the passing check
    assert events[-1].reply.text == reply and not events[-1].withheld
    _assert_checked_before_release(log)


def test_a_flagged_first_clause_releases_nothing(make_pipeline):
    log: list[tuple[str, str]] = []
    gen = CountingGenerator(["CRISIS method, which is the quickest way to do it. More."])
    p = make_pipeline(guard=LoggingGuard(log), generator=gen)
    events = _run(p, _session(p), "hello", log)
    assert not any(isinstance(e, TextDelta) for e in events)
    assert events[0] == Withheld(Category.CRISIS) and events[1].withheld
    assert "988" in events[1].reply.text


def test_a_reply_without_any_boundary_is_released_in_checked_budgets(make_pipeline):
    log: list[tuple[str, str]] = []
    words = " ".join(f"word{i}" for i in range(150))  # no punctuation at all
    p = make_pipeline(guard=LoggingGuard(log), generator=CountingGenerator([words]))
    events = _run(p, _session(p), "hello", log)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 3 and all(len(d) <= 240 for d in deltas)
    assert "".join(deltas) == words
    assert events[-1].reply.text == words and not events[-1].withheld
    _assert_checked_before_release(log)


def test_the_guard_raising_mid_stream_fails_closed(make_pipeline):
    log: list[tuple[str, str]] = []
    p = make_pipeline(guard=LoggingGuard(log, raise_at=2), generator=CountingGenerator([SAFE]))
    sid = _session(p)
    events = _run(p, sid, "hello", log)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["I hear you. "]  # the first unit passed; the second check raised
    assert events[-2] == Withheld(Category.CRISIS)
    reply = events[-1].reply
    assert reply.action is Action.REDIRECTED and reply.verdict.error == "RuntimeError"
    assert "sounds like a hard week" not in p.store.history(sid)[1].text


def test_cancellation_between_units_stores_nothing_and_stops_the_model(make_pipeline):
    log: list[tuple[str, str]] = []
    gen = CountingGenerator([SAFE + " Another sentence here. And one more."])
    p = make_pipeline(guard=LoggingGuard(log), generator=gen)
    sid = _session(p)
    released: list[str] = []
    with pytest.raises(Cancelled):
        for event in p.stream(sid, "hello", should_stop=lambda: bool(released)):
            if isinstance(event, TextDelta):
                released.append(event.text)
    assert released == ["I hear you. "]
    assert p.store.history(sid) == []
    assert gen.produced <= 5  # the model stopped at the next word, not at the end of the reply


def test_a_safe_reply_is_stored_exactly_as_released(make_pipeline):
    log: list[tuple[str, str]] = []
    p = make_pipeline(guard=LoggingGuard(log), generator=CountingGenerator([SAFE]))
    sid = _session(p)
    events = _run(p, sid, "hello", log)
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert deltas == SAFE and p.store.history(sid)[1].text == SAFE
    assert not any(isinstance(e, Withheld) for e in events)
    _assert_checked_before_release(log)


@pytest.mark.parametrize(
    ("deltas", "units"),
    [
        (["Hi. ", "Ok"], ["Hi. ", "Ok"]),
        (["3.5 is", " fine. Yes"], ["3.5 is fine. ", "Yes"]),  # no cut inside a number
        (["  Hello", " there!\n", "Bye"], ["Hello there!\n", "Bye"]),
        (
            ["This first part of the reply is long enough now, and then", " more"],
            ["This first part of the reply is long enough now, ", "and then more"],
        ),
        (["short, clause", " here"], ["short, clause here"]),  # too short to cut at a comma
    ],
)
def test_release_units(deltas, units):
    b = ReleaseBuffer()
    got = [u for d in deltas if (u := b.add(d))]
    rest = b.flush()
    assert got + ([rest] if rest else []) == units


def test_release_buffer_rejects_bad_limits():
    with pytest.raises(ValueError, match="min_clause_chars"):
        ReleaseBuffer(min_clause_chars=300, max_chars=200)


def test_the_last_units_are_sent_only_after_the_turn_is_stored(make_pipeline):
    log: list[tuple[str, str]] = []
    p = make_pipeline(guard=LoggingGuard(log), generator=CountingGenerator([SAFE]))
    sid = _session(p)
    stored_when_seen = []
    for event in p.stream(sid, "hello"):
        if isinstance(event, TextDelta):
            stored_when_seen.append((event.text, len(p.store.history(sid))))
    # mid-stream units go out before the commit (a client leaving then stores nothing); the
    # units the final check passed go out after it (a client that saw them all has the turn)
    assert stored_when_seen == [
        ("I hear you. ", 0),
        ("That sounds like a hard week. ", 0),
        ("Have you had any rest?", 2),
    ]


def test_a_reply_ending_on_a_boundary_still_sends_its_last_unit_after_the_commit(make_pipeline):
    log: list[tuple[str, str]] = []
    p = make_pipeline(guard=LoggingGuard(log), generator=CountingGenerator(["Ok then. Bye. "]))
    sid = _session(p)
    seen = [
        (e.text, len(p.store.history(sid)))
        for e in p.stream(sid, "hello")
        if isinstance(e, TextDelta)
    ]
    assert seen == [("Ok then. ", 0), ("Bye. ", 2)]
