"""The gRPC service on a real ``grpc.aio`` server (port 0) with hand-written fake models."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from companion import (
    Action,
    Category,
    Companion,
    Decision,
    InvalidArgument,
    Role,
    SessionNotFound,
)
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.client import AsyncCompanionClient, TextDelta, TurnDone, Withheld
from companion.config import GenerationConfig
from companion.protocols import ChatMessage, ShouldStop
from companion.sessions import InMemorySessionStore
from companion.testing import TestServer, run_test_server, test_settings

from .fakes import FakeGuard, WordTokens

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


class ScriptGenerator(WordTokens):
    """Replies ``"I hear you (turn N) REPLYMARK"`` forever and records every prompt.

    A message containing ``SLOW`` makes it emit 400 words, 20 ms apart, until told to stop
    (``should_stop``) or closed;
    ``REPLYMED`` in the message makes it answer with a medical trigger word (output guard).
    """

    def __init__(self) -> None:
        self.prompts: list[list[ChatMessage]] = []
        self.stopped = threading.Event()

    @property
    def context_window(self) -> int:
        return 10_000

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        self.prompts.append(list(messages))
        last = messages[-1]["content"]
        if "SLOW" in last:
            try:
                for i in range(400):
                    if should_stop is not None and should_stop():
                        self.stopped.set()
                        return
                    time.sleep(0.02)
                    yield f" w{i}"
            except GeneratorExit:  # closed by the pipeline: stopped too
                self.stopped.set()
                raise
            return
        words = ["MEDICAL", "dose"] if "REPLYMED" in last else ["I", "hear", "you"]
        words += [f"(turn {len(self.prompts)})", "REPLYMARK"]
        for i, w in enumerate(words):
            yield w if i == 0 else " " + w


def _companion() -> tuple[Companion, ScriptGenerator]:
    gen = ScriptGenerator()
    return Companion(FakeGuard(), gen, InMemorySessionStore()), gen


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestServer, ScriptGenerator]]:
    companion, gen = _companion()
    with run_test_server(companion, settings=test_settings().replace(warmup=False)) as server:
        yield server, gen


@pytest.fixture(scope="module")
def stub(served) -> Iterator[pb_grpc.CompanionServiceStub]:
    server, _ = served
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.CompanionServiceStub(channel)


def _code(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code()


# --- health, reflection ------------------------------------------------------------------


def test_health_is_not_serving_until_the_models_are_loaded():
    release = threading.Event()
    companion, _ = _companion()

    def slow_factory(_settings):
        release.wait(30)
        return companion

    settings = test_settings().replace(warmup=False)
    with (
        run_test_server(settings=settings, factory=slow_factory, wait_ready=False) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "companion.v1.CompanionService"):
            req = health_pb2.HealthCheckRequest(service=service)
            status = health.Check(req, timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = pb_grpc.CompanionServiceStub(ch)
        req = pb.CreateSessionRequest(locale="en-US")
        assert _code(stub.CreateSession, req, timeout=5) == grpc.StatusCode.UNAVAILABLE
        release.set()
        server.client.wait_ready(timeout=10)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert stub.CreateSession(req, timeout=5).session_id


def test_reflection_lists_the_services(served):
    server, _ = served
    with grpc.insecure_channel(server.address) as ch:
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(refl.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {
        "companion.v1.CompanionService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


# --- conversations -----------------------------------------------------------------------


def test_conversation_over_send_and_stream_keeps_context_server_side(served):
    server, gen = served
    cl = server.client
    sid = cl.create_session(locale="en-GB", metadata={"app": "test"})
    r1 = cl.send(sid, "I had a long day at work")
    assert r1.action is Action.ANSWERED and r1.category is Category.NONE
    assert r1.text.startswith("I hear you") and r1.turn_index == 1
    assert r1.input_verdict is not None and r1.output_verdict is not None

    events = list(cl.stream(sid, "My manager criticised my report"))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    done = events[-1]
    assert isinstance(done, TurnDone) and not done.withheld
    assert "".join(deltas).strip() == done.reply.text and done.reply.turn_index == 3
    # The second prompt carried the first exchange: the client sent only the new message.
    contents = [m["content"] for m in gen.prompts[-1]]
    assert "I had a long day at work" in contents and r1.text in contents

    turns = cl.history(sid, page_size=3)  # two pages
    assert [t.role for t in turns] == [Role.USER, Role.ASSISTANT] * 2
    assert [t.index for t in turns] == [0, 1, 2, 3]
    assert turns[2].text == "My manager criticised my report"
    cl.delete_session(sid)
    with pytest.raises(SessionNotFound):
        cl.history(sid)


def test_crisis_message_gets_the_resource_reply(served):
    server, _ = served
    sid = server.client.create_session(locale="en-GB")
    r = server.client.send(sid, "CRISIS I cannot go on")
    assert r.category is Category.CRISIS and r.action is Action.REDIRECTED
    assert "116 123" in r.text and any(x.name == "Samaritans" for x in r.resources)
    assert r.output_verdict is None and r.verdict is not None and r.verdict.scores["crisis"] > 0.5


def test_check_in_round_trips_through_grpc_and_its_answer_redirects(served):
    server, _ = served
    sid = server.client.create_session(locale="en-GB")
    r = server.client.send(sid, "RISK i just want to disappear")
    assert (r.action, r.category) == (Action.CHECKED_IN, Category.CRISIS)
    assert r.verdict is not None and r.verdict.decision is Decision.CHECK_IN
    assert [x.name for x in r.resources] == ["Samaritans"] and "Are you having" in r.text
    assert server.client.history(sid)[-1].action is Action.CHECKED_IN
    answer = server.client.send(sid, "RISK idk maybe")  # still unsure after the question
    assert answer.action is Action.REDIRECTED and "116 123" in answer.text
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'companion_turns_total{action="checked_in",category="crisis"}' in body
    assert (
        'companion_guard_decisions_total{category="crisis",decision="check_in",direction="input"}'
        in body
    )


def test_stream_withheld_by_output_guard_says_so_and_sends_no_flagged_text(served):
    server, _ = served
    sid = server.client.create_session(locale="en-US")
    events = list(server.client.stream(sid, "REPLYMED question"))
    assert [type(e) for e in events] == [Withheld, TurnDone]  # "MEDICAL dose" never sent
    assert events[0] == Withheld(Category.MEDICAL)
    assert events[-1].withheld and events[-1].reply.action is Action.REDIRECTED


async def test_async_client(served):
    server, _ = served
    async with AsyncCompanionClient(server.address) as cl:
        await cl.wait_ready(5)
        sid = await cl.create_session("fr-FR")
        r = await cl.send(sid, "Bonjour")
        events = [e async for e in cl.stream(sid, "encore")]
        assert isinstance(events[-1], TurnDone) and r.text.startswith("I hear you")
        assert len(await cl.history(sid)) == 4
        await cl.delete_session(sid)
        with pytest.raises(SessionNotFound):
            await cl.send(sid, "hello")


# --- status codes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("   \n", grpc.StatusCode.INVALID_ARGUMENT),
        ("x" * 4001, grpc.StatusCode.INVALID_ARGUMENT),  # over max_message_chars
        ("x" * 70_000, grpc.StatusCode.RESOURCE_EXHAUSTED),  # over the transport limit
    ],
)
def test_bad_text_gets_its_status_code(served, stub, text, code):
    sid = served[0].client.create_session()
    request = pb.SendMessageRequest(session_id=sid, text=text)
    assert _code(stub.SendMessage, request, timeout=5) == code
    stream_request = pb.StreamMessageRequest(session_id=sid, text=text)
    assert _code(lambda: list(stub.StreamMessage(stream_request, timeout=5))) == code
    assert served[0].client.history(sid) == []


@pytest.mark.parametrize(
    ("session_id", "code"),
    [
        ("A" * 22, grpc.StatusCode.NOT_FOUND),  # well-formed, unknown
        ("not-an-id", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_session_id_gets_its_status_code(stub, session_id, code):
    assert _code(stub.SendMessage, pb.SendMessageRequest(session_id=session_id, text="hi")) == code
    assert _code(stub.GetHistory, pb.GetHistoryRequest(session_id=session_id)) == code
    assert _code(stub.DeleteSession, pb.DeleteSessionRequest(session_id=session_id)) == code


def test_bad_locale_metadata_and_page_get_invalid_argument(served, stub):
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.CreateSession, pb.CreateSessionRequest(locale="not a locale!")) == invalid
    too_many = {f"k{i}": "v" for i in range(17)}
    assert _code(stub.CreateSession, pb.CreateSessionRequest(metadata=too_many)) == invalid
    sid = served[0].client.create_session()
    for req in (
        pb.GetHistoryRequest(session_id=sid, page_token="garbage"),
        pb.GetHistoryRequest(session_id=sid, page_size=-1),
        pb.GetHistoryRequest(session_id=sid, page_size=100_000),
    ):
        assert _code(stub.GetHistory, req) == invalid
    with pytest.raises(InvalidArgument, match="INVALID_ARGUMENT"):
        served[0].client.send(sid, "")


# --- cancellation and deadlines ----------------------------------------------------------


def test_cancelled_stream_stops_generation_and_stores_nothing(served):
    server, gen = served
    gen.stopped.clear()
    sid = server.client.create_session()
    with capture_logs() as logs:
        for event in server.client.stream(sid, "SLOW please"):
            assert isinstance(event, TextDelta)
            break  # leaving the loop cancels the call
        assert gen.stopped.wait(5), "generation did not stop after the call was cancelled"
        time.sleep(0.1)
    assert server.client.history(sid) == []
    assert any(e.get("method") == "StreamMessage" and e["code"] == "CANCELLED" for e in logs)


def test_deadline_exceeded_stops_generation_and_stores_nothing(served, stub):
    server, gen = served
    gen.stopped.clear()
    sid = server.client.create_session()
    req = pb.SendMessageRequest(session_id=sid, text="SLOW please")
    with capture_logs() as logs:
        assert _code(stub.SendMessage, req, timeout=0.3) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert gen.stopped.wait(5)
        time.sleep(0.1)
    assert server.client.history(sid) == []
    assert any(e.get("method") == "SendMessage" and e["code"] == "DEADLINE_EXCEEDED" for e in logs)


def test_cancelled_unary_call_stores_nothing(served, stub):
    server, gen = served
    gen.stopped.clear()
    sid = server.client.create_session()
    future = stub.SendMessage.future(pb.SendMessageRequest(session_id=sid, text="SLOW x"))
    time.sleep(0.3)
    future.cancel()
    assert gen.stopped.wait(5)
    time.sleep(0.1)
    assert server.client.history(sid) == []


def test_shutdown_lets_in_flight_turns_finish():
    companion, _ = _companion()
    results: list[object] = []
    settings = test_settings().replace(warmup=False, grace_seconds=5.0)
    with run_test_server(companion, settings=settings) as server:
        sid = server.client.create_session()
        worker = threading.Thread(target=lambda: results.append(server.client.send(sid, "hi")))
        worker.start()
        worker.join(5)
    assert len(results) == 1 and companion.history(sid)


# --- authentication ----------------------------------------------------------------------


def test_api_keys_authenticate_and_isolate_sessions():
    companion, _ = _companion()
    settings = test_settings(api_keys=[KEY_A, KEY_B]).replace(warmup=False)
    with run_test_server(companion, settings=settings) as server:
        a, b = server.client, server.new_client(api_key=KEY_B)
        sid = a.create_session()
        a.send(sid, "only for A")
        for call in (
            lambda: b.send(sid, "hello"),
            lambda: b.history(sid),
            lambda: b.delete_session(sid),
            lambda: list(b.stream(sid, "hello")),
        ):
            with pytest.raises(SessionNotFound, match="NOT_FOUND"):
                call()
        assert len(a.history(sid)) == 2  # B's attempts changed nothing
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.CompanionServiceStub(ch)
            req = pb.CreateSessionRequest()
            unauth = grpc.StatusCode.UNAUTHENTICATED
            assert _code(stub.CreateSession, req) == unauth
            assert _code(stub.CreateSession, req, metadata=[("authorization", "Bearer nope")]) == (
                unauth
            )
            bad_scheme = [("authorization", f"Basic {KEY_A}")]
            assert _code(stub.CreateSession, req, metadata=bad_scheme) == unauth
            # Health stays open for probes.
            health = health_pb2_grpc.HealthStub(ch)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        # Sessions store a hash of the key, never the key.
        assert KEY_A not in companion.session(sid).info.owner


# --- logs and metrics --------------------------------------------------------------------


def test_logs_never_contain_message_or_reply_text(served, capfd):
    server, _ = served
    secret = "zebra-quartz-7731"
    cl = server.client
    with capture_logs() as logs:
        sid = cl.create_session()
        cl.send(sid, f"my secret is {secret}")
        list(cl.stream(sid, f"again {secret}"))
        cl.send(sid, f"CRISIS {secret}")
        with pytest.raises(InvalidArgument):
            cl.send(sid, secret * 400)
        cl.history(sid)
        time.sleep(0.2)  # the canonical line is written just after the response is sent
    rpc_lines = [e for e in logs if e["event"] == "rpc"]
    assert {e["method"] for e in rpc_lines} >= {"CreateSession", "SendMessage", "StreamMessage"}
    send = next(e for e in rpc_lines if e["method"] == "SendMessage")
    assert send["code"] == "OK" and send["session_id"] == sid and send["category"] == "none"
    assert "latency_ms" in send
    captured = repr(logs) + "".join(capfd.readouterr())
    assert secret not in captured and "REPLYMARK" not in captured


def test_metrics_endpoint_counts_rpcs_turns_and_guard_decisions(served):
    server, _ = served
    sid = server.client.create_session()
    server.client.send(sid, "hello")
    with pytest.raises(InvalidArgument):
        server.client.send(sid, "")
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'companion_rpc_duration_seconds_count{code="OK",method="SendMessage"}' in body
    assert 'companion_turns_total{action="answered",category="none"}' in body
    assert (
        'companion_guard_decisions_total{category="none",decision="none",direction="output"}'
        in body
    )
    assert 'companion_rpc_errors_total{code="INVALID_ARGUMENT",method="SendMessage"}' in body
