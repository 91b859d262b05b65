"""Fail closed under faults (issue 16, item 4): the guard and the model, by injection into the
real parts' dependencies, through a real server on port 0 and a raw stub: an encoder under the
real :class:`SafetyClassifier` that raises or hangs -> the safe resource reply; the model behind
the pipeline (a scripted one, and the real HFGenerator on a tiny model with a forward hook)
that raises or hangs -> UNAVAILABLE, nothing stored, the generation slot freed. Each event is
logged without text and counted in ``companion_faults_total``. The store's faults are in
test_faults_store.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from structlog.testing import capture_logs

from companion import PipelineConfig, Role
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._timeouts import Stuck, call_within, stream_within
from companion.config import GenerationConfig
from companion.errors import GenerationTimeout, GuardTimeout
from companion.protocols import ShouldStop
from companion.sessions import InMemorySessionStore

from .fakes import FakeGuard
from .fault_injection import (
    MARK,
    UNAVAILABLE,
    FaultyEncoder,
    FaultyModel,
    Servers,
    failed_reply,
    faulty_classifier,
    no_marker,
)


@pytest.fixture
def serve() -> Iterator[Servers]:
    servers = Servers()
    yield servers
    servers.close()


# --- the guard: its encoder raises or hangs -> the safe resource reply ----------------------


@pytest.mark.parametrize(("fault", "reason"), [("raise", "error"), ("hang", "timeout")])
def test_input_guard_fault_gives_the_safe_reply_through_the_server(serve, fault, reason):
    encoder, model = FaultyEncoder(), FaultyModel()
    config = PipelineConfig(guard_timeout_seconds=0.5)
    served = serve(faulty_classifier(encoder), model, InMemorySessionStore(), config)
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
    assert reply.input_verdict.check_failed and reply.text == failed_reply()
    assert model.started == 0  # fail closed: the model never ran
    turns = served.server.client.history(sid)
    assert [t.text for t in turns] == [f"I had a rough day {MARK}", failed_reply()]
    assert served.faults("input_guard", reason, 1) == 1
    (failed,) = [e for e in logs if e["event"] == "guard_failed"]
    expected = "GuardTimeout" if fault == "hang" else "RuntimeError"
    assert (failed["direction"], failed["error"], failed["reason"]) == ("input", expected, reason)
    (rpc,) = [e for e in logs if e["event"] == "rpc"]
    assert rpc["code"] == "OK" and rpc["faults"] == [f"input_guard:{reason}"]
    no_marker(logs)
    assert served.serving()


def test_output_guard_hang_withholds_the_reply_and_sends_no_unchecked_text(serve):
    encoder, model = FaultyEncoder(), FaultyModel()
    config = PipelineConfig(guard_timeout_seconds=0.5)
    served = serve(faulty_classifier(encoder), model, InMemorySessionStore(), config)
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
    assert done.reply.text == failed_reply() and MARK not in done.reply.text
    assert MARK not in repr(served.server.client.history(sid))
    assert served.faults("output_guard", "timeout", 1) == 1
    assert any(e["event"] == "guard_failed" and e["direction"] == "output" for e in logs)
    no_marker(logs)


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
    no_marker(logs, failed.value)
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
