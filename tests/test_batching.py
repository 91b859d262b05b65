"""BatchedGenerator on the REAL embedded model: concurrent requests share batches, each gets
the reply it would have got alone, and each stops on its own."""

from __future__ import annotations

import threading

import pytest

from companion import GenerationConfig
from companion.models import BatchedGenerator, HFGenerator, load_causal_lm

pytestmark = pytest.mark.slow

PROMPTS = [
    "Can you recommend a good book?",
    "How do I get better at chess?",
    "I started learning to bake bread.",
    "What's a nice way to start a journal?",
]
GREEDY = GenerationConfig(max_new_tokens=24, do_sample=False)


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm()


def _ask(gen, prompt, config=GREEDY, should_stop=None):
    return "".join(gen.stream([{"role": "user", "content": prompt}], config, should_stop))


def _together(gen, jobs):
    out: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def run(k, args):
        start.wait()
        try:
            out[k] = _ask(gen, *args)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k, a)) for k, a in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out, errors


def test_concurrent_requests_are_batched_and_get_their_serial_replies(lm):
    model, tok = lm
    serial = [_ask(HFGenerator(model, tok), p) for p in PROMPTS]
    gen = BatchedGenerator(model, tok, max_batch=8)
    out, errors = _together(gen, [(p,) for p in PROMPTS])
    assert not errors
    results = out
    assert [results[k] for k in range(len(PROMPTS))] == serial
    # the first request may start alone; the others arrive while it runs and share a batch
    assert all(serial) and sum(gen.batches) == len(PROMPTS) and max(gen.batches) >= 2


def test_each_request_stops_on_its_own(lm):
    model, tok = lm
    gen = BatchedGenerator(model, tok, max_batch=8)
    polls = {"n": 0}

    def stop_soon():
        polls["n"] += 1
        return polls["n"] >= 3

    short = GenerationConfig(max_new_tokens=5, do_sample=False)
    out, errors = _together(
        gen, [(PROMPTS[0], GREEDY), (PROMPTS[1], short), (PROMPTS[2], GREEDY, stop_soon)]
    )
    assert not errors
    full, five, stopped = (
        len(tok(out[k], add_special_tokens=False)["input_ids"]) for k in range(3)
    )
    assert five <= 6 and stopped <= 4 < full  # a short or stopped row leaves; the others go on


def test_an_abandoned_stream_and_an_error_do_not_hang_the_worker(lm):
    model, tok = lm
    gen = BatchedGenerator(model, tok, max_batch=8)
    it = gen.stream([{"role": "user", "content": PROMPTS[0]}], GREEDY)
    next(it)
    it.close()  # the caller stops reading: its row is freed
    assert _ask(gen, PROMPTS[1])  # the worker goes on

    real = model.generate

    def broken(**kwargs):
        raise RuntimeError("boom")

    model.generate = broken
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _ask(gen, PROMPTS[2])
    finally:
        model.generate = real
    assert _ask(gen, PROMPTS[3])  # and after an error too


def test_max_batch_must_be_positive(lm):
    with pytest.raises(ValueError, match="max_batch"):
        BatchedGenerator(*lm, max_batch=0)


def test_the_server_batches_concurrent_turns_on_the_real_model():
    """Four sessions at once through the real gRPC server with generation_batch_size=4: every
    turn is answered, and the model ran them in shared batches."""
    from companion.client import CompanionClient
    from companion.testing import run_test_server, test_settings
    from companion.types import Action

    settings = test_settings(max_new_tokens=16).replace(generation_batch_size=4)
    with run_test_server(settings=settings) as server:
        gen = server.server._companion.pipeline.generator
        assert isinstance(gen, BatchedGenerator) and server.server.servicer.queue.slots == 4
        replies: dict[int, object] = {}
        start = threading.Barrier(len(PROMPTS))

        def turn(k: int) -> None:
            with CompanionClient(server.address, timeout=300) as cl:
                sid = cl.create_session()
                start.wait()
                replies[k] = cl.send(sid, PROMPTS[k])

        threads = [threading.Thread(target=turn, args=(k,)) for k in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert all(r.action is Action.ANSWERED and r.text for r in replies.values()), replies
        assert len(replies) == len(PROMPTS) and max(gen.batches) >= 2, gen.batches
