"""Idempotent turns (issue 16, item 2): request ids in the pipeline, over gRPC, in the clients.

Pipeline tests use the fakes; service tests a real ``grpc.aio`` server on port 0; the client's
retries are tested against a real gRPC server whose servicer fails on purpose (the client is
what is under test). The kill -9 test is in test_kill_retry.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from structlog.testing import capture_logs

from companion import (
    Action,
    Category,
    Companion,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    SessionInfo,
    TextDelta,
    TurnDone,
    Unavailable,
    Withheld,
)
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.client import AsyncCompanionClient, CompanionClient
from companion.sessions import InMemorySessionStore, SQLiteSessionStore, new_session_id
from companion.testing import TestServer, run_test_server, test_settings

from .fakes import FakeGenerator, FakeGuard
from .test_server import ScriptGenerator


def _session(pipeline) -> str:
    sid = new_session_id()
    pipeline.store.create(SessionInfo(sid, "en-GB", time.time()))
    return sid


# --- the pipeline ------------------------------------------------------------------------


def test_a_retry_with_the_same_request_id_gets_the_stored_reply_and_no_second_turn(
    make_pipeline,
):
    gen = FakeGenerator(["That sounds hard."])  # a second generation would fail loudly
    p = make_pipeline(generator=gen)
    sid = _session(p)
    first = p.turn(sid, "I feel low", request_id="req-1")
    again = p.turn(sid, "I feel low", request_id="req-1")
    assert again == first  # text, category, action, resources, both verdicts, turn_index
    assert len(gen.calls) == 1 and len(p.store.history(sid)) == 2
    other = make_pipeline(generator=FakeGenerator(["Tell me more."]))
    other_sid = _session(other)  # ids are per session: the same id elsewhere is a new turn
    assert other.turn(other_sid, "I feel low", request_id="req-1").text == "Tell me more."


@pytest.mark.parametrize(
    ("text", "responses", "kinds"),
    [
        ("I feel low", ["That sounds hard."], [TextDelta, TurnDone]),  # answered
        ("CRISIS now", [], [TurnDone]),  # the input check fired: a fixed message, no delta
        ("tell me", ["take a MEDICAL dose"], [Withheld, TurnDone]),  # the output check fired
    ],
    ids=["answered", "redirected", "withheld"],
)
def test_a_retried_stream_replays_the_stored_reply(make_pipeline, text, responses, kinds):
    p = make_pipeline(generator=FakeGenerator(responses))
    sid = _session(p)
    original = list(p.stream(sid, text, request_id="req-1"))
    replayed = list(p.stream(sid, text, request_id="req-1"))
    assert [type(e) for e in replayed] == kinds
    assert replayed[-1] == original[-1]  # the same TurnDone: reply and withheld flag
    deltas = [e.text for e in replayed if isinstance(e, TextDelta)]
    assert deltas in ([], [original[-1].reply.text])
    assert len(p.store.history(sid)) == 2


def test_the_same_request_id_with_another_text_is_a_failed_precondition(make_pipeline):
    p = make_pipeline(generator=FakeGenerator(["That sounds hard."]))
    sid = _session(p)
    p.turn(sid, "first message", request_id="req-1")
    with pytest.raises(FailedPrecondition, match="different message") as info:
        p.turn(sid, "second message", request_id="req-1")
    assert "message" in str(info.value) and "first" not in str(info.value)
    assert "second" not in str(info.value)
    assert len(p.store.history(sid)) == 2


@pytest.mark.parametrize(
    "request_id",
    ["", "a" * 65, "naïve", "has space", "line\nbreak", "a/b", "٣", "x" * 10_000],
    ids=["empty", "65-chars", "non-ascii", "space", "newline", "slash", "arabic-digit", "long"],
)
def test_a_bad_request_id_is_invalid_and_never_quoted(make_pipeline, request_id):
    p = make_pipeline(generator=FakeGenerator([]))
    sid = _session(p)
    with pytest.raises(InvalidArgument, match="request_id must be 1 to 64 ASCII") as info:
        p.turn(sid, "hello", request_id=request_id)
    if request_id:
        assert request_id not in str(info.value)
    assert p.store.history(sid) == []


def test_valid_request_ids_include_uuids(make_pipeline):
    ids = [str(uuid.uuid4()), uuid.uuid4().hex, "a" * 64, "A-z_0.9:x"]
    p = make_pipeline(generator=FakeGenerator(["ok"] * len(ids)))
    sid = _session(p)
    assert [p.turn(sid, "hi", request_id=i).turn_index for i in ids] == [1, 3, 5, 7]


def test_a_call_that_raced_an_earlier_one_with_its_id_ends_with_the_stored_reply(
    make_pipeline,
):
    """Two calls with one id run at once (a retry while the first is still generating): the
    first to store wins; the other stores nothing and returns the winner's reply."""
    raced: list[object] = []
    started = threading.Event()

    def during_first_generation(i: int) -> None:
        if i == 0 and not started.is_set():
            started.set()
            raced.append(p.turn(sid, "I feel low", request_id="req-1"))  # the retry, to the end

    gen = FakeGenerator(
        ["the slow first reply", "the retry's reply"], on_token=during_first_generation
    )
    p = make_pipeline(generator=gen)
    sid = _session(p)
    with capture_logs() as logs:
        first = p.turn(sid, "I feel low", request_id="req-1")
    assert first == raced[0] and first.text == "the retry's reply"
    assert [t.text for t in p.store.history(sid)] == ["I feel low", "the retry's reply"]
    assert any(e["event"] == "turn_replayed" and e.get("raced") for e in logs)


def test_a_stored_reply_survives_a_restart_of_the_sqlite_store(tmp_path, catalogue):
    from companion import Pipeline

    path = tmp_path / "s.sqlite3"
    first = Pipeline(
        FakeGuard(), FakeGenerator(["That sounds hard."]), SQLiteSessionStore(path), catalogue
    )
    sid = _session(first)
    reply = first.turn(sid, "I feel low", request_id="req-1")
    first.store.close()
    store = SQLiteSessionStore(path)
    second = Pipeline(FakeGuard(), FakeGenerator([]), store, catalogue)  # must not generate
    assert second.turn(sid, "I feel low", request_id="req-1") == reply
    assert second.stored_reply(sid, "I feel low", "req-1") == reply
    assert second.stored_reply(sid, "I feel low", "req-2") is None
    assert len(store.history(sid)) == 2
    store.close()


# --- the service -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestServer, ScriptGenerator]]:
    gen = ScriptGenerator()
    companion = Companion(FakeGuard(), gen, InMemorySessionStore())
    with run_test_server(companion, settings=test_settings().replace(warmup=False)) as server:
        yield server, gen


@pytest.fixture(scope="module")
def stub(served) -> Iterator[pb_grpc.CompanionServiceStub]:
    with grpc.insecure_channel(served[0].address) as channel:
        yield pb_grpc.CompanionServiceStub(channel)


def test_send_message_retried_with_its_request_id_is_answered_from_the_store(served, stub):
    server, gen = served
    sid = server.client.create_session()
    req = pb.SendMessageRequest(session_id=sid, text="I had a long day", request_id="r-1")
    calls = len(gen.prompts)
    with capture_logs() as logs:
        first = stub.SendMessage(req, timeout=5)
        again = stub.SendMessage(req, timeout=5)
        time.sleep(0.2)
    assert again == first and first.turn_index == 1
    assert len(gen.prompts) == calls + 1 and len(server.client.history(sid)) == 2
    lines = [e for e in logs if e["event"] == "rpc" and e["method"] == "SendMessage"]
    assert [e.get("replayed", False) for e in lines] == [False, True]
    assert lines[0]["request_id_hmac"] == lines[1]["request_id_hmac"] != "r-1"
    assert "r-1" not in repr(logs)


def test_stream_message_retried_with_its_request_id_replays_the_stored_reply(served, stub):
    server, gen = served
    sid = server.client.create_session()
    req = pb.StreamMessageRequest(session_id=sid, text="My manager shouted", request_id="r-2")
    first = list(stub.StreamMessage(req, timeout=5))
    calls = len(gen.prompts)
    again = list(stub.StreamMessage(req, timeout=5))
    assert [m.WhichOneof("event") for m in again] == ["delta", "done"]
    assert again[0].delta.text == first[-1].done.reply.text and again[-1] == first[-1]
    # SendMessage and StreamMessage share ids: the streamed turn is SendMessage's reply too
    send = pb.SendMessageRequest(session_id=sid, text="My manager shouted", request_id="r-2")
    assert stub.SendMessage(send, timeout=5) == first[-1].done.reply
    assert len(gen.prompts) == calls and len(server.client.history(sid)) == 2


def test_service_status_codes_for_request_ids(served, stub):
    server, _ = served
    sid = server.client.create_session()
    stub.SendMessage(pb.SendMessageRequest(session_id=sid, text="one", request_id="r-3"))
    for request_id, text, code in (
        ("r-3", "two", grpc.StatusCode.FAILED_PRECONDITION),
        ("r" * 65, "two", grpc.StatusCode.INVALID_ARGUMENT),
        ("r\u00e9", "two", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        for call, cls in (
            (stub.SendMessage, pb.SendMessageRequest),
            (stub.StreamMessage, pb.StreamMessageRequest),
        ):
            req = cls(session_id=sid, text=text, request_id=request_id)
            with pytest.raises(grpc.RpcError) as info:
                list(call(req, timeout=5)) if cls is pb.StreamMessageRequest else call(
                    req, timeout=5
                )
            assert info.value.code() == code, (request_id, cls)
            assert request_id not in info.value.details() and "two" not in info.value.details()
    assert len(server.client.history(sid)) == 2
    with pytest.raises(FailedPrecondition, match="FAILED_PRECONDITION"):
        server.client.send(sid, "two", request_id="r-3")


def test_the_clients_send_a_fresh_uuid_per_message(served):
    server, _ = served
    sid = server.client.create_session()
    with capture_logs() as logs:
        server.client.send(sid, "hello")
        server.client.send(sid, "hello")  # the same text twice is two turns
        list(server.client.stream(sid, "hello"))
        time.sleep(0.2)
    hashes = [e["request_id_hmac"] for e in logs if e["event"] == "rpc" and "request_id_hmac" in e]
    assert len(hashes) == 3 and len(set(hashes)) == 3
    assert len(server.client.history(sid)) == 6


# --- the clients' retries ----------------------------------------------------------------


class FlakyServicer(pb_grpc.CompanionServiceServicer):
    """Fails the first ``failures`` turn calls with ``code``, then answers; records the request
    id of every call. ``delta_first``: a failing stream sends one delta before it fails."""

    def __init__(self, failures: int, code=grpc.StatusCode.UNAVAILABLE, delta_first=False):
        self.failures, self.code, self.delta_first = failures, code, delta_first
        self.request_ids: list[str] = []
        self.lock = threading.Lock()

    def _fail(self, request, context) -> bool:
        with self.lock:
            self.request_ids.append(request.request_id)
            failing = len(self.request_ids) <= self.failures
        if failing and self.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            context.set_trailing_metadata((("retry-after-ms", "1234"),))
        return failing

    def SendMessage(self, request, context):
        if self._fail(request, context):
            context.abort(self.code, "try again")
        return pb.SendMessageResponse(text="stored", turn_index=1, action=pb.ACTION_ANSWERED)

    def StreamMessage(self, request, context):
        if self._fail(request, context):
            if self.delta_first:
                yield pb.StreamMessageResponse(delta=pb.TextDelta(text="half "))
            context.abort(self.code, "try again")
        reply = pb.SendMessageResponse(text="stored", turn_index=1, action=pb.ACTION_ANSWERED)
        yield pb.StreamMessageResponse(delta=pb.TextDelta(text="stored"))
        yield pb.StreamMessageResponse(done=pb.TurnDone(reply=reply))


@pytest.fixture
def flaky():
    servers = []

    def start(servicer: FlakyServicer) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_CompanionServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def test_send_retries_unavailable_with_the_same_request_id(flaky):
    servicer = FlakyServicer(failures=2)
    with CompanionClient(flaky(servicer), retries=3, backoff=0.01) as cl:
        assert cl.send(new_session_id(), "hello").text == "stored"
    ids = servicer.request_ids
    assert len(ids) == 3 and len(set(ids)) == 1 and uuid.UUID(ids[0]).version == 4


def test_retries_are_bounded_and_only_for_unavailable(flaky):
    always = FlakyServicer(failures=100)
    with (
        CompanionClient(flaky(always), retries=2, backoff=0.01) as cl,
        pytest.raises(Unavailable, match="UNAVAILABLE"),
    ):
        cl.send(new_session_id(), "hello")
    assert len(always.request_ids) == 3  # the call and two retries
    invalid = FlakyServicer(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    with (
        CompanionClient(flaky(invalid), retries=3, backoff=0.01) as cl,
        pytest.raises(InvalidArgument),
    ):
        cl.send(new_session_id(), "hello")
    assert len(invalid.request_ids) == 1
    with (
        CompanionClient(flaky(FlakyServicer(failures=1)), retries=0) as cl,
        pytest.raises(Unavailable),
    ):
        cl.send(new_session_id(), "hello")


def test_resource_exhausted_carries_the_retry_hint_and_is_not_retried(flaky):
    servicer = FlakyServicer(failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    with (
        CompanionClient(flaky(servicer), retries=3, backoff=0.01) as cl,
        pytest.raises(ResourceExhausted) as info,
    ):
        cl.send(new_session_id(), "hello")
    assert info.value.retry_after_ms == 1234 and len(servicer.request_ids) == 1


def test_stream_retries_unavailable_only_before_its_first_event(flaky):
    before = FlakyServicer(failures=1)
    with CompanionClient(flaky(before), retries=3, backoff=0.01) as cl:
        events = list(cl.stream(new_session_id(), "hello"))
    assert [type(e) for e in events] == [TextDelta, TurnDone]
    assert len(before.request_ids) == 2 and len(set(before.request_ids)) == 1
    after = FlakyServicer(failures=1, delta_first=True)
    with CompanionClient(flaky(after), retries=3, backoff=0.01) as cl:
        seen = []
        with pytest.raises(Unavailable):
            for event in cl.stream(new_session_id(), "hello", request_id="mine-1"):
                seen.append(event)
    assert seen == [TextDelta("half ")] and after.request_ids == ["mine-1"]


async def test_the_async_client_retries_with_the_same_request_id(flaky):
    servicer = FlakyServicer(failures=2)
    async with AsyncCompanionClient(flaky(servicer), retries=3, backoff=0.01) as cl:
        reply = await cl.send(new_session_id(), "hello")
        events = [e async for e in cl.stream(new_session_id(), "hello")]
    assert reply.text == "stored" and isinstance(events[-1], TurnDone)
    sends, stream = servicer.request_ids[:3], servicer.request_ids[3:]
    assert len(set(sends)) == 1 and len(stream) == 1 and stream[0] != sends[0]


def test_reply_fields_survive_a_replay_over_grpc(served):
    """A redirect's resources and verdicts come back from the store as they were sent."""
    server, _ = served
    sid = server.client.create_session(locale="en-GB")
    first = server.client.send(sid, "CRISIS I cannot go on", request_id="r-crisis")
    again = server.client.send(sid, "CRISIS I cannot go on", request_id="r-crisis")
    assert again == first and first.action is Action.REDIRECTED
    assert first.category is Category.CRISIS and any(
        r.name == "Samaritans" for r in again.resources
    )
