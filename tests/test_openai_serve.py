"""The remote generator against a REAL OpenAI-compatible server: ``transformers serve`` on
loopback, serving the converted embedded model directory on this CPU, offline.

The local model on the same weights (the bare base: the server has no adapter) and greedy
decoding without a repetition penalty (transformers serve refuses the field) give the same
text, so a remote turn is compared with a local one event for event.
"""

from __future__ import annotations

import time

import pytest

import companion.models
from companion import (
    Action,
    Cancelled,
    Category,
    Companion,
    GenerationConfig,
    PipelineConfig,
    TextDelta,
    TurnDone,
    Withheld,
)
from companion.client import TurnDone as ClientTurnDone
from companion.models import HFGenerator, OpenAIChatGenerator, load_causal_lm, load_tokenizer
from companion.models.lm import resolve_base
from companion.prompts import SYSTEM_PROMPT
from companion.safety import SafetyClassifier
from companion.sessions import InMemorySessionStore
from companion.testing import run_test_server, test_settings
from companion.types import Decision, Role, Verdict

from .transformers_server import TransformersServer

pytestmark = pytest.mark.slow

GREEDY = GenerationConfig(max_new_tokens=16, do_sample=False, repetition_penalty=1.0)
CONFIG = PipelineConfig(generation=GREEDY)
MESSAGE = "Can you tell me a long story about a lighthouse keeper?"


@pytest.fixture(scope="module")
def model_dir() -> str:
    return resolve_base(None)[0]  # the converted embedded model (converted now if missing)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = TransformersServer(model_dir, tmp_path_factory.mktemp("tserve"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def guard() -> SafetyClassifier:
    return SafetyClassifier.from_defaults(companion.models.load_encoder(None))


@pytest.fixture(scope="module")
def local(model_dir) -> HFGenerator:
    lm, tokenizer = load_causal_lm(None, adapter=None)
    return HFGenerator(lm, tokenizer)


@pytest.fixture(scope="module")
def remote(server, model_dir):
    tokenizer, window = load_tokenizer("embedded")
    gen = OpenAIChatGenerator(
        server.base_url, model_dir, tokenizer=tokenizer, context_window=window
    )
    yield gen
    gen.close()


class OutputFiresGuard:
    """The real guard on user messages; every reply check fires (a crisis redirect)."""

    def __init__(self, guard: SafetyClassifier) -> None:
        self.guard = guard
        self.policy_version = guard.policy_version

    def classify(self, text, role=Role.USER, context=(), last_assistant=""):
        verdict = self.guard.classify(text, role, context, last_assistant)
        if Role(role) is not Role.ASSISTANT:
            return verdict
        scores = {**verdict.scores, "crisis": 1.0}
        return Verdict(
            Category.CRISIS,
            scores,
            verdict.thresholds,
            verdict.policy_version,
            verdict.direction,
            None,
            Decision.REDIRECT,
        )


def _turn(guard, generator, text=MESSAGE, should_stop=None):
    c = Companion(guard, generator, InMemorySessionStore(), config=CONFIG)
    session = c.start_session(locale="en-GB")
    return c, session, list(c.stream(session.id, text, should_stop))


def test_the_tokenizer_counts_as_the_local_model_does(remote, local):
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": MESSAGE},
    ]
    assert remote.count_tokens(messages) == local.count_tokens(messages) > 20
    assert remote.context_window == local.context_window == 8192


def test_a_streamed_turn_returns_the_local_models_text(guard, remote, local, server):
    before = server.requests_received()
    _, _, events = _turn(guard, remote)
    _, _, expected = _turn(guard, local)
    assert server.requests_received() == before + 1
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas and deltas == [e.text for e in expected if isinstance(e, TextDelta)]
    done = events[-1]
    assert isinstance(done, TurnDone) and done.reply.action is Action.ANSWERED
    assert done.reply.text == expected[-1].reply.text == "".join(deltas).rstrip()
    assert len(done.reply.text.split()) >= 5


def test_a_withheld_turn_behaves_as_with_the_local_model(guard, remote, local):
    forced = OutputFiresGuard(guard)
    c, session, events = _turn(forced, remote)
    _, _, expected = _turn(forced, local)
    assert [type(e) for e in events] == [type(e) for e in expected] == [Withheld, TurnDone]
    reply = events[-1].reply
    assert reply.action is Action.REDIRECTED and reply.text == expected[-1].reply.text
    assert c.history(session.id)[1].text == reply.text  # the fixed message, not the model's


def test_an_input_redirect_never_reaches_the_server(guard, remote, server):
    before = server.requests_received()
    _, _, events = _turn(guard, remote, "I want to kill myself")
    assert events[-1].reply.action is Action.REDIRECTED
    assert server.requests_received() == before


def test_a_cancelled_turn_stops_the_server_generating(guard, remote, server):
    long = GenerationConfig(max_new_tokens=256, do_sample=False, repetition_penalty=1.0)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": MESSAGE},
    ]
    # The control: uncancelled, the same greedy reply keeps the server busy this long.
    started = time.monotonic()
    control = list(remote.stream(messages, long))
    control_s = time.monotonic() - started
    assert len(control) >= 200, "the control reply ended early: choose a longer-winded prompt"

    c = Companion(guard, remote, InMemorySessionStore(), config=PipelineConfig(generation=long))
    session = c.start_session(locale="en-GB")
    released: list[str] = []
    started = time.monotonic()
    with pytest.raises(Cancelled):
        for event in c.stream(session.id, MESSAGE, should_stop=lambda: bool(released)):
            if isinstance(event, TextDelta):
                released.append(event.text)
    cancelled_at = time.monotonic() - started
    assert released and c.history(session.id) == []
    # Uncancelled, the server would still be generating for the next 1.5 s at least...
    assert control_s - cancelled_at > 1.5, (control_s, cancelled_at)
    # ...cancelled, it is idle: the closed stream stopped its model.generate.
    time.sleep(0.3)
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    time.sleep(1.0)
    busy = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    assert busy < 0.25, f"the server used {busy:.2f} CPU-seconds a second after the cancel"


def test_companion_serve_on_the_remote_generator_loads_no_local_model(
    server, model_dir, monkeypatch
):
    def no_local_model(*args, **kwargs):
        raise AssertionError("generator='openai' must not load the local model")

    monkeypatch.setattr(companion.models, "load_causal_lm", no_local_model)
    settings = test_settings(max_new_tokens=16).replace(
        generator="openai",
        openai_base_url=server.base_url,
        openai_model=model_dir,
        openai_tokenizer="embedded",
    )
    with run_test_server(settings=settings) as srv:
        generator = srv.companion.pipeline.generator
        assert isinstance(generator, OpenAIChatGenerator) and generator.context_window == 8192
        sid = srv.client.create_session(locale="en-GB")
        events = list(srv.client.stream(sid, MESSAGE))
        done = events[-1]
        assert isinstance(done, ClientTurnDone) and done.reply.action == "answered"
        assert done.reply.text and len(srv.client.history(sid)) == 2
