"""Fail closed under faults (issue 16, item 4), by injection into the real parts' dependencies.

Each fault goes through a real server on port 0 and a raw stub, into the dependency of the real
component: an encoder under the real :class:`SafetyClassifier`, the model behind the pipeline's
generation, the sqlite3 connection of the real :class:`SQLiteSessionStore` (a database made
full with ``PRAGMA max_page_count``, a second connection holding the write lock). For each:
the status or reply the client gets, nothing partial stored, the server still SERVING, the
event logged without text and counted in ``companion_faults_total``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from companion import Category, Companion, PipelineConfig, ResourceCatalogue, Role
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion._timeouts import Stuck, call_within, stream_within
from companion.config import GenerationConfig
from companion.errors import GenerationTimeout, GuardTimeout
from companion.protocols import ChatMessage, ShouldStop
from companion.safety import LinearHead, Policy, SafetyClassifier
from companion.sessions import InMemorySessionStore, RedisSessionStore, SQLiteSessionStore
from companion.testing import TestServer, run_test_server, test_settings

from .fakes import FakeGuard
from .redis_server import free_port

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


def _classifier(encoder: FaultyEncoder) -> SafetyClassifier:
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


class FaultyModel:
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

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

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
    def __init__(self, server: TestServer, store: object) -> None:
        self.server = server
        self.store = store
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


@pytest.fixture
def serve():
    stack: list[tuple[object, Served]] = []

    def start(guard, generator, store, config: PipelineConfig) -> Served:
        companion = Companion(guard, generator, store, config=config)
        manager = run_test_server(companion, settings=test_settings().replace(warmup=False))
        served = Served(manager.__enter__(), store)
        stack.append((manager, served))
        return served

    yield start
    for manager, served in reversed(stack):
        served.channel.close()
        manager.__exit__(None, None, None)  # type: ignore[attr-defined]


def _failed_reply() -> str:
    text, _ = ResourceCatalogue.load().message(Category.CRISIS, "en-US", failed=True)
    return text


def _no_marker(logs: list[dict], *errors: grpc.RpcError) -> None:
    assert MARK not in repr(logs)
    for error in errors:
        assert MARK not in (error.details() or "")


# --- the guard: its encoder raises or hangs -> the safe resource reply ----------------------


@pytest.mark.parametrize(("fault", "reason"), [("raise", "error"), ("hang", "timeout")])
def test_input_guard_fault_gives_the_safe_reply_through_the_server(serve, fault, reason):
    encoder, model = FaultyEncoder(), FaultyModel()
    config = PipelineConfig(guard_timeout_seconds=0.5)
    served = serve(_classifier(encoder), model, InMemorySessionStore(), config)
    sid = served.session()
    encoder.fault = fault
    with capture_logs() as logs:
        started = time.monotonic()
        reply = served.send(sid, f"I had a rough day {MARK}")
        took = time.monotonic() - started
        time.sleep(0.2)  # the rpc line is written after the status
    encoder.release.set()
    assert took < 5  # the hung encoder waited 0.5 s, not 30
    assert reply.action == pb.ACTION_REDIRECTED and reply.category == pb.CATEGORY_CRISIS
    assert reply.input_verdict.check_failed and reply.text == _failed_reply()
    assert model.started == 0  # fail closed: the model never ran
    turns = served.server.client.history(sid)
    assert [t.text for t in turns] == [f"I had a rough day {MARK}", _failed_reply()]
    assert served.faults("input_guard", reason, 1) == 1
    (failed,) = [e for e in logs if e["event"] == "guard_failed"]
    expected = "GuardTimeout" if fault == "hang" else "RuntimeError"
    assert (failed["direction"], failed["error"], failed["reason"]) == ("input", expected, reason)
    (rpc,) = [e for e in logs if e["event"] == "rpc"]
    assert rpc["code"] == "OK" and rpc["faults"] == [f"input_guard:{reason}"]
    _no_marker(logs)
    assert served.serving()


def test_output_guard_hang_withholds_the_reply_and_sends_no_unchecked_text(serve):
    encoder, model = FaultyEncoder(), FaultyModel()
    config = PipelineConfig(guard_timeout_seconds=0.5)
    served = serve(_classifier(encoder), model, InMemorySessionStore(), config)
    sid = served.session()
    encoder.fault, encoder.only_with = "hang", "hear you"  # the reply's check, not the message's
    request = pb.StreamMessageRequest(session_id=sid, text="a long week")
    with capture_logs() as logs:
        events = list(served.stub.StreamMessage(request, timeout=20))
        time.sleep(0.2)
    encoder.release.set()
    assert [e.WhichOneof("event") for e in events] == ["withheld", "done"]  # no delta at all
    done = events[-1].done
    assert done.withheld and done.reply.output_verdict.check_failed
    assert done.reply.text == _failed_reply() and MARK not in done.reply.text
    assert MARK not in repr(served.server.client.history(sid))
    assert served.faults("output_guard", "timeout", 1) == 1
    assert any(e["event"] == "guard_failed" and e["direction"] == "output" for e in logs)
    _no_marker(logs)


def test_a_guard_stuck_for_good_costs_one_thread_not_one_per_check():
    stuck, release, name = Stuck(), threading.Event(), "test-stuck-check"
    for _ in range(5):
        with pytest.raises(GuardTimeout):
            call_within(lambda: release.wait(30), 0.1, stuck, lambda: GuardTimeout("t"), name)
    assert [t.name for t in threading.enumerate()].count(name) == 1 and stuck.count == 1
    release.set()
    assert call_within(lambda: 42, 1.0, stuck, lambda: GuardTimeout("t")) == 42
    assert stuck.count == 0
    with pytest.raises(KeyError):  # the check's own error, in the caller's thread
        call_within(lambda: {}["x"], 1.0, stuck, lambda: GuardTimeout("t"))


# --- the model: raises or hangs -> UNAVAILABLE, nothing stored, the slot freed --------------


@pytest.mark.parametrize(("fault", "reason"), [("raise", "error"), ("hang", "timeout")])
def test_model_fault_is_unavailable_stores_nothing_and_frees_the_slot(serve, fault, reason):
    model = FaultyModel()
    config = PipelineConfig(generation_timeout_seconds=0.5)
    served = serve(FakeGuard(), model, InMemorySessionStore(), config)
    sid = served.session()
    model.fault = fault
    with capture_logs() as logs:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            served.send(sid, f"hello {MARK}", request_id="req-1")
        took = time.monotonic() - started
        time.sleep(0.2)
    assert failed.value.code() == UNAVAILABLE and took < 5
    assert (
        failed.value.details() == f"the model {'timed out' if fault == 'hang' else 'failed'}; retry"
    )
    assert served.server.client.history(sid) == []  # nothing of the turn
    queue = served.server.server.servicer.queue
    assert queue._free == queue.slots  # the slot is free again, though the model may still hang
    assert served.faults("generator", reason, 1) == 1
    (gen_failed,) = [e for e in logs if e["event"] == "generation_failed"]
    assert gen_failed["reason"] == reason
    (rpc,) = [e for e in logs if e["event"] == "rpc"]
    assert rpc["code"] == "UNAVAILABLE" and rpc["faults"] == [f"generator:{reason}"]
    _no_marker(logs, failed.value)
    assert served.serving()
    # The retry the README advises (same request id) is answered once the model works again.
    model.fault = None
    model.release.set()
    reply = served.send(sid, f"hello {MARK}", request_id="req-1")
    assert reply.action == pb.ACTION_ANSWERED and reply.turn_index == 1
    assert len(served.server.client.history(sid)) == 2


def test_while_the_model_is_stuck_every_turn_times_out_and_none_waits_forever(serve):
    model = FaultyModel()
    config = PipelineConfig(generation_timeout_seconds=0.4)
    served = serve(FakeGuard(), model, InMemorySessionStore(), config)
    sid = served.session()
    model.fault = "hang"
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as failed:
            served.send(sid, "hello", timeout=10)
        assert failed.value.code() == UNAVAILABLE
    assert model.started == 1  # the later turns waited for the stuck one; no second model call
    assert served.faults("generator", "timeout", 3) == 3
    model.release.set()
    model.fault = None
    assert served.send(sid, "hello again").action == pb.ACTION_ANSWERED
    assert model.finished == model.started == 2


def test_stream_with_a_hanging_model_sends_only_checked_text_then_unavailable(serve):
    guard, model = FakeGuard(), FaultyModel()
    config = PipelineConfig(generation_timeout_seconds=0.5)
    served = serve(guard, model, InMemorySessionStore(), config)
    sid = served.session()
    model.fault = "hang_late"
    received: list[str] = []
    with pytest.raises(grpc.RpcError) as failed:
        for event in served.stub.StreamMessage(
            pb.StreamMessageRequest(session_id=sid, text="hi"), timeout=10
        ):
            received.append(event.delta.text)
    model.release.set()
    assert failed.value.code() == UNAVAILABLE
    assert received == [f"I hear you {MARK}. "]  # released once the model wrote more
    checked = [text for text, role, _ in guard.calls if role is Role.ASSISTANT]
    assert received[0] in checked[0]  # and only after the output guard passed it
    assert served.server.client.history(sid) == []


def test_the_timed_stream_stays_lazy_and_stops_the_model_when_left():
    produced: list[int] = []
    closed = threading.Event()

    def model(stop: ShouldStop) -> Iterator[str]:
        try:
            for i in range(100):
                produced.append(i)
                yield f"w{i} "
        finally:
            closed.set()

    stream = stream_within(model, 5.0, Stuck(), None, lambda: GenerationTimeout("t"))
    assert [next(stream), next(stream)] == ["w0 ", "w1 "]
    time.sleep(0.1)
    assert len(produced) <= 3  # one delta per delta asked for (not read ahead to the end)
    stream.close()
    assert closed.wait(2) and len(produced) <= 3  # the model was closed, in its own thread


def _tiny_hf_generator():
    """The real HFGenerator on a tiny random Llama with a word-level tokenizer built here (no
    files, no hub), and a forward hook on its one layer: the injection point for model faults."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from companion.models import HFGenerator

    words = ["<unk>", "<eos>", "<s>", "user", "assistant", "system", ":", "."]
    words += ["i", "hear", "you", "tell", "me", "more", "what", "happened"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=1,
        bos_token_id=2,
        pad_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    fault: dict[str, object] = {"mode": None, "after": 3, "calls": 0, "release": threading.Event()}

    def hook(module, args, output):
        fault["calls"] = int(fault["calls"]) + 1  # type: ignore[call-overload]
        if fault["mode"] and fault["calls"] == fault["after"]:
            if fault["mode"] == "raise":
                raise RuntimeError("CUDA out of memory")
            fault["release"].wait(30)  # type: ignore[attr-defined]
        return output

    model.model.layers[0].register_forward_hook(hook)
    return HFGenerator(model, tokenizer), fault


@pytest.mark.slow  # imports torch and transformers (seconds), though the model is tiny
@pytest.mark.parametrize(("mode", "reason"), [("raise", "error"), ("hang", "timeout")])
def test_real_hf_generator_whose_model_fails_is_unavailable_and_recovers(serve, mode, reason):
    generator, fault = _tiny_hf_generator()
    config = PipelineConfig(
        generation_timeout_seconds=1.0,
        generation=GenerationConfig(max_new_tokens=12, do_sample=False),
    )
    served = serve(FakeGuard(), generator, InMemorySessionStore(), config)
    sid = served.session()
    assert served.send(sid, "i hear you").action == pb.ACTION_ANSWERED  # it works
    fault.update(mode=mode, calls=0)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        served.send(sid, f"tell me more {MARK}")
    assert failed.value.code() == UNAVAILABLE and time.monotonic() - started < 10
    assert served.faults("generator", reason, 1) == 1
    assert len(served.server.client.history(sid)) == 2  # the failed turn left nothing
    assert served.serving()
    fault["mode"] = None
    fault["release"].set()  # type: ignore[attr-defined]
    assert served.send(sid, "what happened").turn_index == 3


# --- the store: disk full, database locked -> UNAVAILABLE, nothing partial ------------------


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_full_sqlite_database_is_unavailable_stores_nothing_and_recovers(serve, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    store = SQLiteSessionStore(db)
    served = serve(FakeGuard(), FaultyModel(), store, PipelineConfig())
    sid = served.session()
    served.send(sid, "a first message")
    # The store's own connection (its dependency) may not grow the file past its size now.
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    text = f"{MARK} " + "a long message " * 250
    with capture_logs() as logs:
        with pytest.raises(grpc.RpcError) as failed:
            served.send(sid, text, request_id="req-full")
        time.sleep(0.2)
    assert failed.value.code() == UNAVAILABLE
    assert failed.value.details() == "the session store is unavailable (SQLITE_FULL); retry"
    assert _rows(db, "SELECT COUNT(*) FROM turns") == [(2,)]  # nothing partial
    assert _rows(db, "SELECT COUNT(*) FROM requests") == [(0,)]
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert len(served.server.client.history(sid)) == 2  # reads still work
    assert served.faults("store", "full", 1) == 1
    (event,) = [e for e in logs if e["event"] == "session_store_unavailable"]
    assert (event["operation"], event["error"], event["reason"]) == (
        "append",
        "SQLITE_FULL",
        "full",
    )
    _no_marker(logs, failed.value)
    assert served.serving()
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space again: the retry is stored
    assert served.send(sid, text, request_id="req-full").turn_index == 3
    assert served.send(sid, text, request_id="req-full").turn_index == 3  # once
    assert _rows(db, "SELECT COUNT(*) FROM turns") == [(4,)]


def test_locked_sqlite_database_is_unavailable_then_recovers(serve, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    store = SQLiteSessionStore(db, busy_timeout=0.2)
    served = serve(FakeGuard(), FaultyModel(), store, PipelineConfig())
    sid = served.session()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                served.send(sid, f"hello {MARK}", request_id="req-locked")
            took = time.monotonic() - started
            with pytest.raises(grpc.RpcError) as create_failed:
                served.session()
            time.sleep(0.2)
        assert failed.value.code() == create_failed.value.code() == UNAVAILABLE
        assert "SQLITE_BUSY" in failed.value.details() and took < 5
        assert served.server.client.history(sid) == []  # readers are not blocked in WAL mode
        assert served.faults("store", "locked", 2) == 2
        reasons = [e["reason"] for e in logs if e["event"] == "session_store_unavailable"]
        assert reasons == ["locked", "locked"]
        _no_marker(logs, failed.value)
        assert served.serving()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert served.send(sid, f"hello {MARK}", request_id="req-locked").turn_index == 1
    assert _rows(db, "SELECT COUNT(*) FROM turns") == [(2,)]


def test_unreachable_redis_is_a_counted_store_fault(serve):
    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    served = serve(FakeGuard(), FaultyModel(), store, PipelineConfig())
    with capture_logs() as logs:
        with pytest.raises(grpc.RpcError) as failed:
            served.session()
        time.sleep(0.2)
    assert failed.value.code() == UNAVAILABLE
    assert served.faults("store", "unreachable", 1) == 1
    (rpc,) = [e for e in logs if e["event"] == "rpc"]
    assert rpc["faults"] == ["store:unreachable"]
    assert served.serving()
