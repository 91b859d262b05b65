"""The remote generator inside the pipeline and the server, against the scripted HTTP server:
checked release, a failed upstream as UNAVAILABLE with nothing stored, cancellation, warm-up
while the engine starts, and the settings that select it."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from companion import (
    Action,
    Cancelled,
    Category,
    Companion,
    GenerationConfig,
    ModelLoadError,
    PipelineConfig,
    SessionInfo,
    TextDelta,
    TurnDone,
    Unavailable,
    Withheld,
)
from companion.models import OpenAIChatGenerator
from companion.server import ServerSettings
from companion.server import app as server_app
from companion.server._remote import make_generator
from companion.sessions import InMemorySessionStore, new_session_id
from companion.testing import run_test_server, test_settings

from .fakes import FakeGenerator, FakeGuard
from .openai_fake import FakeChatServer, Plan, stream
from .redis_server import free_port

pytest.importorskip("openai")

REPLY = "That sounds like a heavy week. What has been hardest about it?"
CONFIG = PipelineConfig(generation=GenerationConfig(max_new_tokens=16, do_sample=False))


def _words(text: str) -> tuple[str, ...]:
    parts = text.split(" ")
    return tuple(p if i == 0 else " " + p for i, p in enumerate(parts))


def _pipeline(make_pipeline, generator, guard=None):
    p = make_pipeline(guard=guard or FakeGuard(), config=CONFIG)
    p.generator = generator
    sid = new_session_id()
    p.store.create(SessionInfo(sid, "en-GB", time.time()))
    return p, sid


def _kinds(events):
    return [type(e).__name__ for e in events]


def _remote(url: str, **kwargs) -> OpenAIChatGenerator:
    return OpenAIChatGenerator(url, "served-model", backoff=0.0, **kwargs)


@pytest.mark.parametrize("reply", [REPLY, "CRISIS is what this reply talks about. And more."])
def test_a_turn_streams_exactly_as_with_a_local_generator(make_pipeline, reply):
    local, lsid = _pipeline(make_pipeline, FakeGenerator([reply]))
    expected = list(local.stream(lsid, "I had a long week"))
    with FakeChatServer([stream(*_words(reply))]) as srv:
        remote, rsid = _pipeline(make_pipeline, _remote(srv.base_url))
        events = list(remote.stream(rsid, "I had a long week"))
    assert _kinds(events) == _kinds(expected)
    assert [e for e in events if isinstance(e, TextDelta | Withheld)] == [
        e for e in expected if isinstance(e, TextDelta | Withheld)
    ]
    done, want = events[-1], expected[-1]
    assert isinstance(done, TurnDone) and isinstance(want, TurnDone)
    assert (done.reply.text, done.reply.action) == (want.reply.text, want.reply.action)
    # The system prompt and the context are companion's: the server got them as messages.
    sent = srv.seen[0].body["messages"]
    assert sent[0]["role"] == "system" and sent[-1] == {
        "role": "user",
        "content": "I had a long week",
    }


def test_the_output_guard_withholds_remote_text(make_pipeline):
    with FakeChatServer([stream("CRISIS words ", "from the server.")]) as srv:
        p, sid = _pipeline(make_pipeline, _remote(srv.base_url))
        events = list(p.stream(sid, "hello"))
    assert _kinds(events) == ["Withheld", "TurnDone"]
    reply = events[-1].reply
    assert reply.category is Category.CRISIS and reply.action is Action.REDIRECTED
    assert "CRISIS" not in reply.text and "CRISIS" not in p.store.history(sid)[1].text


def test_an_unreachable_server_fails_the_turn_and_stores_nothing(make_pipeline):
    p, sid = _pipeline(make_pipeline, _remote(f"http://127.0.0.1:{free_port()}/v1", retries=1))
    with pytest.raises(Unavailable):
        p.turn(sid, "hello")
    assert p.store.history(sid) == []


def test_a_cancelled_turn_closes_the_upstream_stream_and_stores_nothing(make_pipeline):
    words = _words(("One sentence here. " * 60).strip())
    with FakeChatServer([stream(*words, delay=0.02)]) as srv:
        p, sid = _pipeline(make_pipeline, _remote(srv.base_url))
        released: list[str] = []
        with pytest.raises(Cancelled):
            for event in p.stream(sid, "hello", should_stop=lambda: bool(released)):
                if isinstance(event, TextDelta):
                    released.append(event.text)
        seen = srv.wait_gone()
    assert released == ["One sentence here. "]
    assert seen.gone_at is not None and not seen.finished and seen.written < len(words) // 2
    assert p.store.history(sid) == []


def test_the_service_answers_unavailable_and_stores_nothing_when_the_server_is_down():
    dead = _remote(f"http://127.0.0.1:{free_port()}/v1", retries=0)
    companion = Companion(FakeGuard(), dead, InMemorySessionStore(), config=CONFIG)
    settings = test_settings().replace(warmup=False)
    with run_test_server(companion, settings=settings) as server:
        client = server.new_client(retries=0)
        sid = client.create_session(locale="en-US")
        with pytest.raises(Unavailable, match="UNAVAILABLE"):
            client.send(sid, "hello")
        assert client.history(sid) == []


def test_warm_up_waits_for_the_engine_and_then_serves(monkeypatch, caplog):
    monkeypatch.setattr(server_app, "_WARMUP_RETRY_S", 0.05)
    caplog.set_level(logging.WARNING)
    with FakeChatServer([Plan("status", status=503)]) as srv:
        companion = Companion(
            FakeGuard(), _remote(srv.base_url), InMemorySessionStore(), config=CONFIG
        )
        with (
            run_test_server(companion, wait_ready=False) as server,
            grpc.insecure_channel(server.address) as ch,
        ):
            health = health_pb2_grpc.HealthStub(ch)
            while len(srv.seen) < 2:
                time.sleep(0.02)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            srv.plans = [stream("hi")]  # the engine is up
            server.client.wait_ready(timeout=10)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    assert srv.seen[-1].body["max_tokens"] == 2  # the warm-up generation went through
    assert "warmup_waiting" in caplog.text and "HTTP 503" in caplog.text


# --- settings -> generator ------------------------------------------------------------------


def _openai_settings(url: str, **kwargs) -> ServerSettings:
    return ServerSettings(generator="openai", openai_base_url=url, openai_model="m", **kwargs)


def test_the_local_generator_builds_no_remote_one():
    assert make_generator(ServerSettings()) is None


def test_the_key_file_is_read_and_sent(tmp_path):
    key_file = tmp_path / "openai-key"
    key_file.write_text("sk-from-a-file-8c1d\n")
    with FakeChatServer([stream("ok")]) as srv:
        gen = make_generator(
            _openai_settings(srv.base_url, openai_api_key_file=str(key_file), openai_retries=0)
        )
        assert isinstance(gen, OpenAIChatGenerator)
        assert list(gen.stream([{"role": "user", "content": "x"}], GenerationConfig())) == ["ok"]
    assert srv.seen[0].headers["authorization"] == "Bearer sk-from-a-file-8c1d"
    assert gen.context_window == 4096 and gen.retries == 0 and gen.tokenizer is None


def test_an_env_key_is_sent(monkeypatch):
    env = {
        "COMPANION_GENERATOR": "openai",
        "COMPANION_OPENAI_MODEL": "m",
        "COMPANION_OPENAI_API_KEY": "sk-from-the-env-77aa",
        "COMPANION_OPENAI_CONTEXT_WINDOW": "2048",
    }
    with FakeChatServer([stream("ok")]) as srv:
        settings = ServerSettings.from_env({**env, "COMPANION_OPENAI_BASE_URL": srv.base_url})
        gen = make_generator(settings)
        list(gen.stream([{"role": "user", "content": "x"}], GenerationConfig()))
    assert srv.seen[0].headers["authorization"] == "Bearer sk-from-the-env-77aa"
    assert gen.context_window == 2048


@pytest.mark.parametrize("content", [None, "  \n"])
def test_a_missing_or_empty_key_file_names_the_setting_not_a_key(tmp_path, content):
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ModelLoadError, match=r"openai_api_key_file .*key") as info:
        make_generator(_openai_settings("http://127.0.0.1:1/v1", openai_api_key_file=str(path)))
    assert "empty" in str(info.value) or "cannot read" in str(info.value)


def test_generator_openai_needs_a_url_and_a_model():
    with pytest.raises(ValueError, match="needs openai_base_url and openai_model"):
        ServerSettings.from_mapping({"generator": "openai", "openai_model": "m"})
    with pytest.raises(ValueError, match="needs openai_base_url and openai_model"):
        ServerSettings.from_env(
            {"COMPANION_GENERATOR": "openai", "COMPANION_OPENAI_BASE_URL": "http://h/v1"}
        )
    # The openai_* settings are harmless while the generator is local (compose sets them).
    assert ServerSettings(openai_base_url="http://h/v1").generator == "local"


def test_the_key_stays_out_of_repr_and_errors():
    key = "sk-never-show-3f9e0b"
    s = _openai_settings("http://user:pw@h/v1", openai_api_key=key)
    assert key not in repr(s) and "pw@" not in repr(s)
    with pytest.raises(ValueError) as info:
        ServerSettings.from_env({"COMPANION_OPENAI_API_KEY": key, "COMPANION_OPENAI_RETRIES": key})
    assert "openai_retries (COMPANION_OPENAI_RETRIES)" in str(info.value)
    assert key not in str(info.value)
    with pytest.raises(ValueError, match="give one or neither") as info:
        ServerSettings(openai_api_key=key, openai_api_key_file="/run/secrets/k")
    assert key not in str(info.value)
    with pytest.raises(ValueError, match="http:// or https://") as info:
        ServerSettings.from_env({"COMPANION_OPENAI_BASE_URL": "ftp://" + key})
    assert key not in str(info.value)
