"""Fault injection for tests/test_faults*.py: faulty dependencies of the real parts (an encoder
for the real SafetyClassifier, a model for the pipeline) and a served companion to reach them
through a real server and a raw stub."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from companion import Category, Companion, PipelineConfig, ResourceCatalogue, Role
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.config import GenerationConfig
from companion.protocols import ChatMessage, ShouldStop
from companion.safety import LinearHead, Policy, SafetyClassifier
from companion.testing import TestServer, run_test_server, test_settings

from .fakes import WordTokens

MARK = "zqxmarker"  # in every message and reply: must appear in no log line or error message
VOCAB = ("die", "pills", "dose", "bridge", "parked")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


# --- the injected dependencies ------------------------------------------------------------


class FaultyEncoder:
    """A bag-of-words encoder (the real classifier's dependency) with a fault switch.

    ``fault``: ``None``; ``"raise"``; ``"hang"`` (blocks until :attr:`release` is set). With
    ``only_with``, the fault hits only batches with a text that contains it.
    """

    name = "faulty-bow"

    def __init__(self) -> None:
        self.fault: str | None = None
        self.only_with = ""
        self.release = threading.Event()
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.fault and all(self.only_with in t for t in texts[:1]):
            if self.fault == "raise":
                raise RuntimeError("encoder backend down")
            self.release.wait(30)
        return np.array([[float(w in t.lower()) for w in VOCAB] for t in texts], dtype=np.float32)


def faulty_classifier(encoder: FaultyEncoder) -> SafetyClassifier:
    d = len(VOCAB)
    w_user = np.zeros((2 * d, 2), dtype=np.float32)
    w_user[0, 0] = w_user[d, 0] = 10  # "die" in the message or the window: crisis
    w_user[1, 1] = w_user[2, 1] = 10
    w_asst = np.zeros((d, 2), dtype=np.float32)
    w_asst[0, 0] = w_asst[2, 1] = 10
    bias = np.array([-5, -5], dtype=np.float32)
    head = LinearHead({Role.USER: (w_user, bias), Role.ASSISTANT: (w_asst, bias)})
    thresholds = {r: {"crisis": 0.5, "medical": 0.5} for r in ("user", "assistant")}
    return SafetyClassifier(
        encoder,
        head,
        Policy(policy_version="faults-1", thresholds=thresholds, encoder=encoder.name),
    )


class FaultyModel(WordTokens):
    """The generator behind the pipeline, with a fault switch. It writes three sentences; with
    ``fault`` ``"raise"`` it raises after the first, with ``"hang"`` it blocks after the first
    (``"hang_late"``: the second), ignoring ``should_stop`` (a model stuck in a kernel), until
    :attr:`release` is set."""

    context_window = 10_000

    def __init__(self) -> None:
        self.fault: str | None = None
        self.release = threading.Event()
        self.started = 0
        self.finished = 0

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        self.started += 1
        try:
            yield f"I hear you {MARK}. "
            if self.fault == "raise":
                raise RuntimeError("CUDA error: an illegal memory access")
            if self.fault == "hang":
                self.release.wait(30)
            yield f"Tell me more {MARK}. "
            if self.fault == "hang_late":
                self.release.wait(30)
            yield "What happened?"
        finally:
            self.finished += 1


# --- a served companion ---------------------------------------------------------------------


class Served:
    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.address)
        self.stub = pb_grpc.CompanionServiceStub(self.channel)

    def session(self) -> str:
        return str(self.stub.CreateSession(pb.CreateSessionRequest(locale="en-US")).session_id)

    def send(self, sid: str, text: str, request_id: str = "", timeout: float = 20):
        request = pb.SendMessageRequest(session_id=sid, text=text, request_id=request_id)
        return self.stub.SendMessage(request, timeout=timeout)

    def faults(self, component: str, reason: str, expect: float | None = None) -> float:
        """The count; with ``expect``, waited for a moment (the interceptor counts a call
        just after its status went out)."""
        labels = {"component": component, "reason": reason}
        deadline = time.monotonic() + 2
        while True:
            value = self.server.server.metrics.registry.get_sample_value(
                "companion_faults_total", labels
            )
            if expect is None or value == expect or time.monotonic() > deadline:
                return value or 0.0
            time.sleep(0.02)

    def serving(self) -> bool:
        health = health_pb2_grpc.HealthStub(self.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        return bool(status == health_pb2.HealthCheckResponse.SERVING)


class Servers:
    """Starts served companions for one test (the ``serve`` fixture) and stops them all."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def __call__(self, guard, generator, store, config: PipelineConfig) -> Served:
        companion = Companion(guard, generator, store, config=config)
        settings = test_settings().replace(warmup=False)
        served = Served(self._stack.enter_context(run_test_server(companion, settings=settings)))
        self._stack.callback(served.channel.close)
        return served

    def close(self) -> None:
        self._stack.close()


def failed_reply() -> str:
    text, _ = ResourceCatalogue.load().message(Category.CRISIS, "en-US", failed=True)
    return text


def no_marker(logs: list[dict], *errors: grpc.RpcError) -> None:
    assert MARK not in repr(logs)
    for error in errors:
        assert MARK not in (error.details() or "")
