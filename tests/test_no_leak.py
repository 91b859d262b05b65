"""A unique marker sent through every RPC, failures included, reaches no log line, no metric
and no error a client sees (issue 16 item 7).

A real server on a port with keys, a per-key rate limit and the failed-authentication brake,
logging as ``companion serve`` does (JSON, here at debug level) into the captured stderr, so
grpc's own records and anything written to the file descriptors are read too. The generator
echoes the message, so reply text carries the marker as well.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from companion import Companion, CompanionError, ResourceExhausted
from companion._logging import configure_logging
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.config import GenerationConfig
from companion.protocols import ChatMessage, ShouldStop
from companion.sessions import InMemorySessionStore
from companion.testing import run_test_server, test_settings

from .fakes import FakeGuard, WordTokens

KEY = "key-leak-0123456789abcdef"
MARKER = "mk" + uuid.uuid4().hex[:14]  # letters and digits: a valid request id
LOCALE_MARK = "lq" + uuid.uuid4().hex[:6]  # a valid locale subtag (at most 8): en-GB-lq...


class EchoGenerator(WordTokens):
    """Replies ``You said: <the message>``, so the reply carries whatever the message did."""

    context_window = 10_000

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        yield "You said:"
        for word in messages[-1]["content"].split():
            yield " " + word


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


class Seen:
    """Everything the client was told about failed calls."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.codes: list[str] = []

    def raw(self, call: Callable[[], Any]) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            call()
        err = info.value
        self.texts += [
            str(err.details()),
            str(err.debug_error_string()),
            repr(err.initial_metadata()),
            repr(err.trailing_metadata()),
            str(err),
        ]
        self.codes.append(err.code().name)
        return err.code()

    def client(self, call: Callable[[], Any]) -> CompanionError:
        with pytest.raises(CompanionError) as info:
            call()
        self.texts += [str(info.value), repr(info.value), repr(info.value.args)]
        self.codes.append(str(info.value).split(":", 1)[0])
        return info.value


def _str_field(number: int, raw: bytes) -> bytes:
    assert len(raw) < 128
    return bytes([number << 3 | 2, len(raw)]) + raw


def test_marker_reaches_no_log_metric_or_error(restore_logging, capfd):
    # In the test itself: pytest swaps sys.stderr between a fixture's setup and the call.
    configure_logging("debug", json=True)
    companion = Companion(FakeGuard(), EchoGenerator(), InMemorySessionStore())
    settings = test_settings(api_keys=[KEY]).replace(
        warmup=False,
        log_level="debug",
        key_rate_limit=0.01,
        key_rate_burst=40,
        auth_failure_rate=0.01,
        auth_failure_burst=3,
    )
    seen = Seen()
    with (
        run_test_server(companion, settings=settings) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        cl = server.client
        stub = pb_grpc.CompanionServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        auth = [("authorization", f"Bearer {KEY}")]

        # Calls that succeed, the marker in every string field they have.
        sid = cl.create_session(locale=f"en-GB-{LOCALE_MARK}", metadata={MARKER: MARKER})
        reply = cl.send(sid, f"my secret is {MARKER}", request_id=MARKER)
        events = list(cl.stream(sid, f"again {MARKER}", request_id=MARKER + "s"))
        turns = cl.history(sid)
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        gone = cl.create_session(metadata={"note": MARKER})
        cl.send(gone, f"erase this {MARKER}")
        cl.delete_session(gone)

        # Calls that fail, for every reason a client can make them fail.
        bad_sid = MARKER * 2
        for call in (
            lambda: cl.send(bad_sid, MARKER),
            lambda: list(cl.stream(bad_sid, MARKER)),
            lambda: cl.history(bad_sid),
            lambda: cl.delete_session(bad_sid),
            lambda: cl.send(sid, MARKER * 400),  # over 4000 characters
            lambda: list(cl.stream(sid, MARKER * 400)),
            lambda: cl.send(sid, f"another text {MARKER}", request_id=MARKER),  # conflict
            lambda: cl.send(sid, MARKER, request_id="!" + MARKER),
            lambda: cl.create_session(locale=MARKER * 3),
            lambda: cl.create_session(locale="!" + MARKER),
            lambda: cl.create_session(metadata={MARKER * 5: "v"}),
            lambda: cl.create_session(metadata={"k": MARKER * 20}),
        ):
            seen.client(call)
        page = pb.GetHistoryRequest(session_id=sid, page_token=MARKER)
        seen.raw(lambda: stub.GetHistory(page, metadata=auth, timeout=5))
        seen.raw(lambda: stub.GetHistory(page, metadata=auth, timeout=5))
        service = health_pb2.HealthCheckRequest(service=MARKER)
        assert seen.raw(lambda: health.Check(service, timeout=5)) is grpc.StatusCode.NOT_FOUND
        # Reflection answers an unknown name in its response (which repeats the request, by
        # the protocol); its error message must not repeat the name.
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        lookups = [
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=MARKER),
            reflection_pb2.ServerReflectionRequest(file_by_filename=MARKER),
        ]
        for answer in reflect.ServerReflectionInfo(iter(lookups), timeout=5):
            assert answer.HasField("error_response")
            seen.texts.append(answer.error_response.error_message)
        undecodable = _str_field(1, MARKER.encode() + b"\xff\xfe")
        send = ch.unary_unary("/companion.v1.CompanionService/SendMessage")
        seen.raw(lambda: send(undecodable, metadata=auth, timeout=5))
        seen.raw(lambda: send(b"\x0a\x7f" + MARKER.encode(), metadata=auth, timeout=5))

        # Rate-limited: the key's burst runs out, then a message with the marker is refused.
        for _ in range(60):
            try:
                cl.send(sid, f"until the limit {MARKER}")
            except ResourceExhausted as exc:
                seen.texts += [str(exc), repr(exc.args)]
                seen.codes.append("RESOURCE_EXHAUSTED")
                break
        else:
            pytest.fail("the key's rate limit never applied")
        seen.client(lambda: list(cl.stream(sid, MARKER)))
        seen.client(lambda: cl.delete_session(sid))

        # Wrong keys (the marker as the key) until the address is braked, then braked calls.
        guesser = server.new_client(api_key=MARKER * 2, retries=0)
        for _ in range(3):
            seen.client(lambda: guesser.send(sid, MARKER))
        seen.client(lambda: guesser.create_session(locale=MARKER))
        basic = [("authorization", f"Basic {MARKER}")]
        seen.raw(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=basic, timeout=5))

        time.sleep(0.3)  # the rpc line is written just after the status is sent
        url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
    captured = capfd.readouterr()
    logs = captured.err + captured.out

    # The marker went through: it is in what the service stores and answers...
    assert MARKER in reply.text and any(MARKER in t.text for t in turns)
    assert MARKER in str(events[-1])
    # ...and each failure happened as meant, so the checks below read real lines.
    codes = set(seen.codes)
    assert {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "NOT_FOUND",
        "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED",
    } <= codes, codes
    lines = [json.loads(ln) for ln in logs.splitlines() if ln.startswith("{")]
    rpc = [e for e in lines if e.get("event") == "rpc"]
    assert len(rpc) >= 30 and {"rate_limited", "auth_throttled"} <= {e.get("rejected") for e in rpc}
    assert any("session_id_hmac" in e for e in rpc) and any("peer_hmac" in e for e in rpc)
    assert "companion_rpc_errors_total" in metrics

    # The markers are in none of them; nor is the key.
    for where, text in [("logs", logs), ("metrics", metrics), ("errors", "\n".join(seen.texts))]:
        for secret in (MARKER, LOCALE_MARK, KEY):
            assert secret not in text, f"{secret} leaked into the {where}"
