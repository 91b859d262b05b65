"""OpenAIChatGenerator against a scripted in-process HTTP server: the request it sends, its
timeouts, which failures it retries, and that stopping closes the upstream stream. The same
generator against a real ``transformers serve`` is in tests/test_openai_serve.py."""

from __future__ import annotations

import logging
import time

import pytest

from companion import GenerationConfig, Unavailable
from companion.models import OpenAIChatGenerator, estimate_tokens
from companion.models.openai_chat import safe_url

from .openai_fake import FakeChatServer, Plan, stream
from .redis_server import free_port

pytest.importorskip("openai")

KEY = "sk-test-Zq8Jw1RkT5uV9x"
MESSAGES = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "I feel tired today."},
]
GREEDY = GenerationConfig(max_new_tokens=16, do_sample=False)


def _gen(url: str, **kwargs) -> OpenAIChatGenerator:
    kwargs.setdefault("backoff", 0.0)
    return OpenAIChatGenerator(url, "served-model", KEY, **kwargs)


def test_streams_the_deltas_and_sends_the_request_it_documents():
    with FakeChatServer([stream("I hear ", "you", ".")]) as srv:
        out = list(_gen(srv.base_url).stream(MESSAGES, GREEDY))
    assert out == ["I hear ", "you", "."]  # the role-only first chunk yields nothing
    (seen,) = srv.seen
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    body = seen.body
    assert body["model"] == "served-model" and body["messages"] == MESSAGES
    assert body["stream"] is True and body["max_tokens"] == 16
    assert body["temperature"] == 0.0  # greedy
    assert "top_p" not in body and "seed" not in body and "repetition_penalty" not in body


def test_sampling_seed_and_repetition_penalty_map_onto_the_request():
    config = GenerationConfig(max_new_tokens=8, temperature=0.6, top_p=0.8, seed=7)
    with FakeChatServer([stream("ok")]) as srv:
        list(_gen(srv.base_url, send_repetition_penalty=True).stream(MESSAGES, config))
        list(OpenAIChatGenerator(srv.base_url, "m").stream(MESSAGES, config))
    first, second = (s.body for s in srv.seen)
    assert (first["temperature"], first["top_p"], first["seed"]) == (0.6, 0.8, 7)
    assert first["repetition_penalty"] == config.repetition_penalty
    assert "repetition_penalty" not in second
    # No key configured: a placeholder the keyless servers ignore, never another variable's.
    assert srv.seen[1].headers["authorization"] == "Bearer EMPTY"


def test_connection_dropped_before_a_response_is_retried():
    with FakeChatServer([Plan("drop"), Plan("drop"), stream("fine")]) as srv:
        assert list(_gen(srv.base_url, retries=2).stream(MESSAGES, GREEDY)) == ["fine"]
    assert len(srv.seen) == 3


def test_stream_cut_before_its_first_token_is_retried():
    with FakeChatServer([Plan("break", after=0), stream("second try")]) as srv:
        assert list(_gen(srv.base_url, retries=1).stream(MESSAGES, GREEDY)) == ["second try"]
    assert len(srv.seen) == 2


def test_retries_run_out_as_unavailable():
    with (
        FakeChatServer([Plan("drop")]) as srv,
        pytest.raises(Unavailable, match="cannot reach the generation server"),
    ):
        list(_gen(srv.base_url, retries=2).stream(MESSAGES, GREEDY))
    assert len(srv.seen) == 3  # the first attempt and two retries


def test_connection_refused_is_unavailable_after_backing_off():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach"):
        list(_gen(url, retries=2, backoff=0.1).stream(MESSAGES, GREEDY))
    assert 0.1 * 0.75 + 0.2 * 0.75 <= time.monotonic() - started < 3.0  # 0.1 s, then 0.2 s


def test_stream_cut_after_the_first_token_is_never_retried():
    plan = Plan("break", chunks=("one ", "two ", "three"), after=1)
    with FakeChatServer([plan, stream("a whole other reply")]) as srv:
        got: list[str] = []
        with pytest.raises(Unavailable, match="broke off after 1 chunks"):
            for delta in _gen(srv.base_url, retries=3).stream(MESSAGES, GREEDY):
                got.append(delta)
    assert got == ["one "] and len(srv.seen) == 1


def test_read_timeout_before_the_response_is_not_retried():
    with FakeChatServer([Plan("stall", delay=3.0)]) as srv:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer in time"):
            list(_gen(srv.base_url, read_timeout=0.3, retries=2).stream(MESSAGES, GREEDY))
        assert time.monotonic() - started < 2.0
    assert len(srv.seen) == 1


def test_read_timeout_between_chunks_ends_the_reply():
    plan = Plan("stall_after", chunks=("first ", "second"), after=1, delay=3.0)
    with FakeChatServer([plan]) as srv:
        started = time.monotonic()
        got: list[str] = []
        with pytest.raises(Unavailable, match="broke off after 1 chunks"):
            for delta in _gen(srv.base_url, read_timeout=0.3, retries=2).stream(MESSAGES, GREEDY):
                got.append(delta)
        assert time.monotonic() - started < 2.0
    assert got == ["first "] and len(srv.seen) == 1


@pytest.mark.parametrize("status", [401, 404, 422, 500, 503])
def test_error_status_is_unavailable_without_the_body_or_a_retry(status):
    with (
        FakeChatServer([Plan("status", status=status)]) as srv,
        pytest.raises(Unavailable) as info,
    ):
        list(_gen(srv.base_url, retries=2).stream(MESSAGES, GREEDY))
    assert str(info.value).startswith(f"the generation server answered HTTP {status}")
    assert "tired" not in str(info.value)  # the body quoted the request
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert len(srv.seen) == 1


def test_should_stop_closes_the_upstream_stream():
    chunks = tuple(f"w{i} " for i in range(200))
    with FakeChatServer([stream(*chunks, delay=0.02)]) as srv:
        got: list[str] = []
        out = _gen(srv.base_url).stream(MESSAGES, GREEDY, should_stop=lambda: len(got) >= 3)
        for delta in out:
            got.append(delta)
        stopped = time.monotonic()
        seen = srv.wait_gone()
    assert got == ["w0 ", "w1 ", "w2 "]
    assert seen.gone_at is not None and seen.gone_at - stopped < 1.0
    assert not seen.finished and seen.written < 60


def test_closing_the_iterator_closes_the_upstream_stream():
    # The pipeline closes the generator's iterator when the output guard fires or the turn
    # is cancelled.
    chunks = tuple(f"w{i} " for i in range(200))
    with FakeChatServer([stream(*chunks, delay=0.02)]) as srv:
        it = _gen(srv.base_url).stream(MESSAGES, GREEDY)
        assert next(it) == "w0 "
        it.close()
        seen = srv.wait_gone()
    assert seen.gone_at is not None and not seen.finished and seen.written < 60


def test_should_stop_during_a_backoff_ends_without_another_attempt():
    url = f"http://127.0.0.1:{free_port()}/v1"
    deadline = time.monotonic() + 0.3
    started = time.monotonic()
    out = list(
        _gen(url, retries=5, backoff=10.0).stream(
            MESSAGES, GREEDY, should_stop=lambda: time.monotonic() > deadline
        )
    )
    assert out == [] and time.monotonic() - started < 2.0


def test_counts_tokens_by_the_documented_estimate_without_a_tokenizer():
    gen = OpenAIChatGenerator("http://127.0.0.1:1/v1", "m")
    # ceil(8 / 4) + 4 and ceil(19 / 4) + 4, plus 3 for the assistant header.
    assert gen.count_tokens(MESSAGES) == estimate_tokens(MESSAGES) == 6 + 9 + 3
    assert gen.context_window == 4096
    assert OpenAIChatGenerator("http://h/v1", "m", context_window=8192).context_window == 8192


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"base_url": "ftp://h/v1"}, "http:// or https://"),
        ({"model": ""}, "model"),
        ({"read_timeout": 0}, "read_timeout=0"),
        ({"retries": -1}, "retries=-1"),
        ({"context_window": 10}, "context_window=10"),
    ],
)
def test_bad_arguments_name_the_rule(kwargs, rule):
    args = {"base_url": "http://h/v1", "model": "m", **kwargs}
    with pytest.raises(ValueError, match=rule):
        OpenAIChatGenerator(**args)


def test_safe_url_drops_user_info_and_query():
    assert safe_url("https://user:pw@example.com:8443/v1?key=x") == "https://example.com:8443/v1"
    assert safe_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


def test_no_key_message_or_reply_reaches_a_log_line_at_debug(caplog):
    caplog.set_level(logging.DEBUG)  # every logger: openai's, httpx's, httpcore's, ours
    message = [{"role": "user", "content": "MAUVE-HERON-MESSAGE"}]
    plans = [Plan("drop"), stream("TEAL-OTTER-", "REPLY"), Plan("status", status=422)]
    with FakeChatServer(plans) as srv:
        gen = _gen(srv.base_url, retries=1)
        assert "".join(gen.stream(message, GREEDY)) == "TEAL-OTTER-REPLY"
        with pytest.raises(Unavailable) as info:
            list(gen.stream(message, GREEDY))
    assert len(srv.seen) == 3 and caplog.records  # the retry and the failure were logged
    logged = "\n".join(r.getMessage() for r in caplog.records) + str(info.value)
    assert "generation_retry" in logged and "generation_failed_upstream" in logged
    for secret in (KEY, "MAUVE-HERON", "TEAL-OTTER"):
        assert secret not in logged
