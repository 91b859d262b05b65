"""BatchedGenerator on the REAL embedded model: concurrent requests share decoding steps, a
request that arrives mid-batch joins between steps, each gets the reply it would have got alone,
and each stops on its own."""

from __future__ import annotations

import threading
import time

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


def _together(gen, jobs, stagger=0.0):
    """Run ``jobs`` at once (or ``stagger`` seconds apart); their replies and errors."""
    out: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def run(k, args):
        start.wait()
        time.sleep(stagger * k)
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
    assert all(serial) and max(gen.steps) >= 2  # they shared decoding steps


def test_a_request_arriving_mid_batch_joins_between_steps(lm):
    """Requests 0.4 s apart: each joins the running rows at the next step (the rows grow while
    the first is still decoding) and still gets its serial greedy reply."""
    model, tok = lm
    serial = [_ask(HFGenerator(model, tok), p) for p in PROMPTS]
    gen = BatchedGenerator(model, tok, max_batch=8)
    out, errors = _together(gen, [(p,) for p in PROMPTS], stagger=0.4)
    assert not errors
    assert [out[k] for k in range(len(PROMPTS))] == serial
    steps = list(gen.steps)
    grew = [k for k in range(1, len(steps)) if steps[k] > steps[k - 1]]
    assert steps[0] == 1 and len(grew) >= 2, steps  # later requests joined a running batch


def test_a_shared_prompt_start_is_prefilled_once(lm):
    """Prompts with the same system prompt: the second prefills only what follows it, and its
    greedy reply is still the serial one."""
    model, tok = lm
    system = {"role": "system", "content": "You are a kind, brief companion. " * 6}

    def ask(gen, prompt):
        return "".join(gen.stream([system, {"role": "user", "content": prompt}], GREEDY))

    serial = [ask(HFGenerator(model, tok), p) for p in PROMPTS[:2]]
    gen = BatchedGenerator(model, tok, max_batch=8)
    assert [ask(gen, p) for p in PROMPTS[:2]] == serial
    (_, r1), (n2, r2) = gen.reused
    assert r1 == 0 and 40 <= r2 < n2  # the system prompt's tokens (and more) were reused


def test_a_sessions_next_turn_starts_from_its_last_prompt_and_reply(lm):
    model, tok = lm
    first = [{"role": "user", "content": PROMPTS[0]}]
    gen = BatchedGenerator(model, tok, max_batch=8)
    reply = "".join(gen.stream(first, GREEDY))
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
    again = "".join(gen.stream(second, GREEDY))
    assert again == "".join(HFGenerator(model, tok).stream(second, GREEDY))
    (n1, _), (n2, r2) = gen.reused
    assert r2 < n2
    assert r2 > n1 + len(tok(reply)["input_ids"]) // 2  # the prompt and most of the reply


def test_rows_decode_with_their_own_settings_and_seeds(lm):
    """A greedy and two seeded sampling requests share steps: the greedy one is its serial
    reply and a seed gives the same reply as the same seed alone."""
    model, tok = lm
    sampled = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=0.9, seed=11)
    other = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=0.9, seed=12)
    gen = BatchedGenerator(model, tok, max_batch=8)
    alone = _ask(gen, PROMPTS[1], sampled)
    assert _ask(gen, PROMPTS[1], sampled) == alone  # a seed reproduces
    out, errors = _together(gen, [(PROMPTS[0], GREEDY), (PROMPTS[1], sampled), (PROMPTS[1], other)])
    assert not errors and max(gen.steps) >= 2
    assert out[0] == _ask(HFGenerator(model, tok), PROMPTS[0])
    assert out[1] == alone and out[2] != alone


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

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    model.forward = broken  # the prefill fails: that request gets the error
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _ask(gen, PROMPTS[2])
    finally:
        del model.forward
    assert _ask(gen, PROMPTS[3])  # and the worker goes on


def test_an_error_mid_batch_reaches_every_running_request(lm):
    model, tok = lm
    gen = BatchedGenerator(model, tok, max_batch=8)
    calls = {"n": 0}
    real = model.forward

    def fails_later(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # after both prefills, during the shared steps
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    model.forward = fails_later
    try:
        out, errors = _together(gen, [(PROMPTS[0],), (PROMPTS[1],)])
    finally:
        del model.forward
    assert len(errors) == 2 and all("boom" in str(e) for e in errors), (out, errors)
    assert _ask(gen, PROMPTS[2])


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
        assert len(replies) == len(PROMPTS) and max(gen.steps) >= 2, gen.steps


def test_the_static_cache_gives_the_plain_paths_greedy_replies(lm):
    model, tok = lm
    plain, static = HFGenerator(model, tok), HFGenerator(model, tok, static_cache=True)
    for prompt in PROMPTS[:2]:
        assert _ask(static, prompt) == _ask(plain, prompt)
    assert model.generation_config.cache_implementation is None  # asked per call, not set


def test_the_static_cache_needs_one_turn_at_a_time():
    from companion import Companion

    with pytest.raises(ValueError, match="batch_size=1"):
        Companion.from_defaults("memory", batch_size=2, static_cache=True)


def test_bf16_weights_load_through_the_library_and_share_batched_steps():
    """``dtype="bfloat16"`` (the ``generation_dtype`` setting) reaches the local model; on this
    CPU it makes a step of several rows cost about what one costs (docs/benchmarks.md). Its
    greedy replies may differ from fp32's, so only that every request is answered in shared
    steps is asserted."""
    import torch

    from companion import Companion

    companion = Companion.from_defaults("memory", batch_size=4, dtype="bfloat16")
    gen = companion.pipeline.generator
    assert isinstance(gen, BatchedGenerator) and gen.model.dtype is torch.bfloat16
    out, errors = _together(gen, [(p,) for p in PROMPTS])
    assert not errors and len(out) == len(PROMPTS) and all(out.values())
    assert max(gen.steps) >= 2
