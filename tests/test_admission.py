"""Admission and priority (issue 16, item 1) on a real ``grpc.aio`` server with a slow fake model.

:class:`GatedGenerator` holds a lock while it generates, as ``HFGenerator`` does, and does not
finish until the test opens its gate: the model is saturated for as long as a test needs.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from companion import Companion
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.config import GenerationConfig
from companion.protocols import ChatMessage, ShouldStop
from companion.sessions import InMemorySessionStore
from companion.testing import TestServer, run_test_server, test_settings

from .fakes import FakeGuard, WordTokens

SERVING = health_pb2.HealthCheckResponse.SERVING


class GatedGenerator(WordTokens):
    """One generation at a time (a lock, like the real model's); each waits for :attr:`gate`.
    :attr:`calls` holds the last message of every prompt that reached the model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.calls: list[str] = []

    @property
    def context_window(self) -> int:
        return 10_000

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        with self.lock:
            self.calls.append(messages[-1]["content"])
            while not self.gate.wait(0.01):
                if should_stop is not None and should_stop():
                    return
            yield "I hear you."


@pytest.fixture
def serve_gated() -> Iterator[Callable[..., tuple[TestServer, GatedGenerator]]]:
    opened: list[tuple[object, GatedGenerator]] = []

    def start(**settings: object) -> tuple[TestServer, GatedGenerator]:
        gen = GatedGenerator()
        companion = Companion(FakeGuard(), gen, InMemorySessionStore())
        cm = run_test_server(companion, settings=test_settings().replace(warmup=False, **settings))
        server = cm.__enter__()
        opened.append((cm, gen))
        return server, gen

    yield start
    for cm, gen in opened:
        gen.gate.set()  # let every turn end, so that the server stops at once
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sample(server: TestServer, name: str, **labels: str) -> float:
    value = server.server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_cheap_calls_stay_fast_and_the_turn_past_the_queue_is_refused_at_once(serve_gated):
    server, gen = serve_gated(generation_queue_depth=8)
    queue = server.server.servicer.queue
    with grpc.insecure_channel(server.address) as ch:
        stub, health = pb_grpc.CompanionServiceStub(ch), health_pb2_grpc.HealthStub(ch)
        sids = [
            stub.CreateSession(pb.CreateSessionRequest(), timeout=5).session_id for _ in range(10)
        ]
        turns = [
            stub.SendMessage.future(pb.SendMessageRequest(session_id=s, text=f"m{i}"), timeout=60)
            for i, s in enumerate(sids[:9])
        ]
        _until(lambda: len(gen.calls) == 1 and queue.waiting == 8)  # 1 generating, 8 waiting
        with capture_logs() as logs:
            t0 = time.perf_counter()
            with pytest.raises(grpc.RpcError) as refused:
                stub.SendMessage(pb.SendMessageRequest(session_id=sids[9], text="m9"), timeout=10)
            refused_after = time.perf_counter() - t0
            time.sleep(0.1)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and refused_after < 0.5
        hint = dict(refused.value.trailing_metadata())["retry-after-ms"]
        assert hint.isdigit() and int(hint) >= 50
        # While the model is saturated, the cheap calls take milliseconds, never a turn's time.
        latencies = []
        for _ in range(20):
            latencies.append(
                _timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=2))
            )
            latencies.append(
                _timed(lambda: stub.CreateSession(pb.CreateSessionRequest(), timeout=2))
            )
            latencies.append(
                _timed(lambda: stub.GetHistory(pb.GetHistoryRequest(session_id=sids[0]), timeout=2))
            )
        new = stub.CreateSession(pb.CreateSessionRequest(), timeout=2).session_id
        latencies.append(
            _timed(lambda: stub.DeleteSession(pb.DeleteSessionRequest(session_id=new), timeout=2))
        )
        assert max(latencies) < 0.5, sorted(latencies)[-5:]
        gen.gate.set()
        assert [f.result(timeout=30).text for f in turns] == ["I hear you."] * 9
    (line,) = [e for e in logs if e["event"] == "rpc" and e["method"] == "SendMessage"]
    assert line["code"] == "RESOURCE_EXHAUSTED" and line["rejected"] == "queue_full"
    assert line["retry_after_ms"] == int(hint)
    name = "companion_rejected_rpcs_total"
    assert _sample(server, name, method="SendMessage", reason="queue_full") == 1
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'companion_rejected_rpcs_total{method="SendMessage",reason="queue_full"} 1.0' in body
    assert "companion_generation_queue_length 0.0" in body


def test_a_turn_whose_client_left_while_it_queued_never_reaches_the_model(serve_gated):
    server, gen = serve_gated(generation_queue_depth=4)
    queue = server.server.servicer.queue
    cl = server.client
    running, left, expired = cl.create_session(), cl.create_session(), cl.create_session()
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.CompanionServiceStub(ch)
        first = stub.SendMessage.future(pb.SendMessageRequest(session_id=running, text="first"))
        _until(lambda: gen.calls == ["first"])
        gone = stub.SendMessage.future(pb.SendMessageRequest(session_id=left, text="LEFT"))
        stream = stub.StreamMessage(pb.StreamMessageRequest(session_id=left, text="LEFTSTREAM"))
        _until(lambda: queue.waiting == 2)
        with capture_logs() as logs:
            gone.cancel()
            stream.cancel()
            with pytest.raises(grpc.RpcError) as late:  # its deadline passes in the queue
                stub.SendMessage(
                    pb.SendMessageRequest(session_id=expired, text="LATE"), timeout=0.5
                )
            _until(lambda: queue.waiting == 0)
            time.sleep(0.1)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gen.gate.set()
        assert first.result(timeout=10).text == "I hear you."
        time.sleep(0.3)  # a dropped turn that did run would have reached the model by now
    assert gen.calls == ["first"]
    assert cl.history(left) == [] and cl.history(expired) == []
    name = "companion_rejected_rpcs_total"
    assert _sample(server, name, method="SendMessage", reason="client_gone") == 1
    assert _sample(server, name, method="StreamMessage", reason="client_gone") == 1
    assert _sample(server, name, method="SendMessage", reason="deadline_passed") == 1
    lines = {(e["method"], e.get("rejected")) for e in logs if e["event"] == "rpc"}
    assert ("SendMessage", "deadline_passed") in lines and ("SendMessage", "client_gone") in lines
    assert "LEFT" not in repr(logs) and "LATE" not in repr(logs)


def test_health_and_reflection_are_never_refused_at_the_concurrency_limit(serve_gated):
    server, gen = serve_gated(max_concurrent_rpcs=2)
    with grpc.insecure_channel(server.address) as ch:
        stub, health = pb_grpc.CompanionServiceStub(ch), health_pb2_grpc.HealthStub(ch)
        sid = stub.CreateSession(pb.CreateSessionRequest(), timeout=5).session_id
        turns = [
            stub.SendMessage.future(pb.SendMessageRequest(session_id=sid, text=f"m{i}"), timeout=30)
            for i in range(2)
        ]
        _until(lambda: len(gen.calls) == 1 and server.server.servicer.queue.waiting == 1)
        with capture_logs() as logs:
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateSession(pb.CreateSessionRequest(), timeout=5)
            time.sleep(0.1)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry-after-ms" in dict(refused.value.trailing_metadata())
        for _ in range(20):  # a liveness probe keeps working
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (listed,) = list(refl.ServerReflectionInfo(iter([request]), timeout=5))
        assert listed.list_services_response.service
        gen.gate.set()
        assert all(f.result(timeout=10).text for f in turns)
        assert stub.CreateSession(pb.CreateSessionRequest(), timeout=5).session_id  # room again
    (line,) = [e for e in logs if e["event"] == "rpc"]
    assert (line["method"], line["code"], line["rejected"]) == (
        "CreateSession",
        "RESOURCE_EXHAUSTED",
        "concurrency_limit",
    )
    assert (
        _sample(
            server,
            "companion_rejected_rpcs_total",
            method="CreateSession",
            reason="concurrency_limit",
        )
        == 1
    )


def test_a_retry_of_a_stored_turn_is_answered_even_when_the_queue_is_full(serve_gated):
    server, gen = serve_gated(generation_queue_depth=0)  # only the running turn, no waiting
    gen.gate.set()
    cl = server.client
    sid, busy = cl.create_session(), cl.create_session()
    stored = cl.send(sid, "hello", request_id="kept-1")
    gen.gate.clear()
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.CompanionServiceStub(ch)
        blocker = stub.SendMessage.future(pb.SendMessageRequest(session_id=busy, text="busy"))
        _until(lambda: gen.calls[-1:] == ["busy"])
        with pytest.raises(grpc.RpcError) as refused:  # a new turn: refused
            stub.SendMessage(pb.SendMessageRequest(session_id=sid, text="new"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert cl.send(sid, "hello", request_id="kept-1") == stored  # a retry: answered
        gen.gate.set()
        blocker.result(timeout=10)
