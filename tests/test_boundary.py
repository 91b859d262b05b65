"""Bad bytes at the service boundary (issue 16): undecodable requests, odd strings, logs.

A real ``grpc.aio`` server on port 0 with the fake guard and generator of ``test_server``.
Raw calls use identity serializers, so exactly the bytes we write reach the server.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from companion import Companion, InvalidArgument
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.sessions import InMemorySessionStore, is_valid_session_id
from companion.testing import TestServer, run_test_server, test_settings

from .fakes import FakeGuard
from .test_server import ScriptGenerator

SERVICE = "/companion.v1.CompanionService/"
UNARY = ("CreateSession", "SendMessage", "GetHistory", "DeleteSession")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# What a message to the client must never name: our classes, protobuf's or Python's.
INTERNAL_NAMES = re.compile(r"google\.protobuf|\w+Error\b|Exception|Traceback|<class")


def _identity(b: bytes) -> bytes:
    return b


@pytest.fixture(scope="module")
def served() -> Iterator[TestServer]:
    companion = Companion(FakeGuard(), ScriptGenerator(), InMemorySessionStore())
    with run_test_server(companion, settings=test_settings().replace(warmup=False)) as server:
        yield server


@pytest.fixture(scope="module")
def channel(served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address) as ch:
        yield ch


def _call(channel: grpc.Channel, method: str, body: bytes, timeout: float = 5) -> None:
    """Send ``body`` as the request of ``method`` and read the whole response."""
    path = SERVICE + method
    if method == "StreamMessage":
        list(channel.unary_stream(path, request_serializer=_identity)(body, timeout=timeout))
    else:
        channel.unary_unary(path, request_serializer=_identity)(body, timeout=timeout)


def _raw(channel: grpc.Channel, method: str, body: bytes) -> grpc.RpcError:
    """The error that sending ``body`` to ``method`` got (it must fail)."""
    with pytest.raises(grpc.RpcError) as info:
        _call(channel, method, body)
    return info.value


def _str_field(number: int, raw: bytes) -> bytes:
    """A length-delimited field with arbitrary bytes (protobuf would refuse to encode them)."""
    assert len(raw) < 128
    return bytes([number << 3 | 2, len(raw)]) + raw


# --- undecodable requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff",  # not protobuf at all
        b"\x0a\x05ab",  # truncated: field 1 says 5 bytes, 2 follow
        _str_field(1, b"\xff\xfe"),  # invalid UTF-8 in a string field
        _str_field(1, b"\xed\xa0\x80"),  # a lone surrogate (U+D800 as UTF-8)
        _str_field(1, b"ok \xc3"),  # a cut multi-byte sequence
    ],
    ids=["garbage", "truncated", "invalid-utf8", "lone-surrogate", "cut-sequence"],
)
@pytest.mark.parametrize("method", [*UNARY, "StreamMessage"])
def test_undecodable_request_gets_invalid_argument_naming_no_class(channel, method, body):
    error = _raw(channel, method, body)
    assert error.code() == INVALID, (error.code(), error.details())
    assert "not a valid" in error.details()
    assert not INTERNAL_NAMES.search(error.details()), error.details()


def test_undecodable_health_and_reflection_requests_get_invalid_argument(channel):
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=_identity)
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=_identity)
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=_identity,
    )
    bad = _str_field(1, b"\xff")
    for call in (
        lambda: check(bad, timeout=5),
        lambda: next(iter(watch(bad, timeout=5))),
        lambda: list(reflect(iter([bad]), timeout=5)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == INVALID
        assert not INTERNAL_NAMES.search(info.value.details())


def test_undecodable_request_is_logged_without_its_bytes(channel):
    with capture_logs() as logs:
        _raw(channel, "SendMessage", _str_field(1, b"SECRETBYTES\xff"))
        time.sleep(0.2)  # the canonical line is written just after the status is sent
    (line,) = [e for e in logs if e["event"] == "rpc" and e["method"] == "SendMessage"]
    assert line["code"] == "INVALID_ARGUMENT"
    assert "SECRETBYTES" not in repr(logs)


# --- page tokens, locales, metadata ------------------------------------------------------


@pytest.mark.parametrize("token", ["²", "٣", "\uff11", "৪২", "3²", "-1", " 1", "1e3"])
def test_page_token_must_be_ascii_digits(served, channel, token):
    sid = served.client.create_session()
    stub = pb_grpc.CompanionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetHistory(pb.GetHistoryRequest(session_id=sid, page_token=token), timeout=5)
    assert info.value.code() == INVALID


@pytest.mark.parametrize(
    "locale",
    [
        "en" + "-abcdefgh" * 6000,  # 54,002 characters of a well-formed tag
        "en-GB-abcdefgh-abcdefgh-abcdefgh-abc",  # 36
        "en-٣٣٣",  # Arabic-Indic digits as a region
        "en-GB\n",
        " en-GB",
        "en\x00GB",
        "\uff45\uff4e-GB",  # fullwidth "en"
    ],
)
def test_locale_is_bounded_and_ascii(served, channel, locale):
    stub = pb_grpc.CompanionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateSession(pb.CreateSessionRequest(locale=locale), timeout=5)
    assert info.value.code() == INVALID
    assert locale not in info.value.details()
    assert len(info.value.details()) < 200
    with pytest.raises(InvalidArgument):
        served.companion.start_session(locale)


@pytest.mark.parametrize("locale", ["en-GB", "fr_CA", "es-419", "zh-Hant-TW", "en-GB-abcdefgh-x-1"])
def test_ordinary_locales_still_work(served, locale):
    assert served.companion.start_session(locale).locale == locale
    assert served.client.create_session(locale=locale)


def test_locale_of_35_characters_is_accepted(served):
    locale = "en-GB-abcdefgh-abcdefgh-abcdefgh-ab"
    assert len(locale) == 35
    assert served.client.create_session(locale=locale)


@pytest.mark.parametrize(
    "metadata",
    [
        {"k" * 65: "v"},
        {"k": "v" * 257},
        {f"k{i}": "v" for i in range(17)},
    ],
)
def test_metadata_is_bounded(channel, metadata):
    stub = pb_grpc.CompanionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateSession(pb.CreateSessionRequest(metadata=metadata), timeout=5)
    assert info.value.code() == INVALID


# --- logs: client strings never appear raw -----------------------------------------------


def test_invalid_session_id_is_logged_as_a_short_keyed_hash(served, channel):
    stub = pb_grpc.CompanionServiceStub(channel)
    long_id = "Z" * 60_000
    with capture_logs() as logs:
        for sid in (long_id, long_id, "not-an-id"):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetHistory(pb.GetHistoryRequest(session_id=sid), timeout=5)
            assert info.value.code() == INVALID
        good = served.client.create_session()
        served.client.history(good)
        time.sleep(0.2)
    lines = [e for e in logs if e["event"] == "rpc" and e["method"] == "GetHistory"]
    assert "ZZZZZZZZ" not in repr(logs) and "not-an-id" not in repr(logs)
    bad = [e for e in lines if e["code"] == "INVALID_ARGUMENT"]
    assert len(bad) == 3 and all("session_id" not in e for e in bad)
    hashes = [e["session_id_hmac"] for e in bad]
    assert all(re.fullmatch(r"[0-9a-f]{12}", h) for h in hashes)
    assert hashes[0] == hashes[1] != hashes[2]  # the same id gives the same hash in a process
    (ok,) = [e for e in lines if e["code"] == "OK"]
    assert ok["session_id"] == good  # a valid id is logged as it is


def test_logged_session_id_hash_is_keyed_per_process():
    import hashlib

    from companion.server.interceptors import session_id_fields

    fields = session_id_fields("not-an-id")
    assert fields["session_id_hmac"] != hashlib.sha256(b"not-an-id").hexdigest()[:12]
    assert session_id_fields("A" * 22) == {"session_id": "A" * 22}
    assert session_id_fields("") == {}


# --- fuzz --------------------------------------------------------------------------------

_ALPHABET = [
    "a",
    "Z",
    "0",
    "9",
    "-",
    "_",
    " ",
    "\n",
    "\x00",
    "²",
    "٣",
    "\uff11",
    "é",
    "\u202e",
    "\ufeff",
    "😀",
    "\U0010ffff",
    "\uff45",
]
_BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xc0\xaf"]


def _fuzz_string(rng: random.Random, valid_sid: str) -> str:
    roll = rng.random()
    if roll < 0.15:
        return valid_sid
    if roll < 0.25:
        return str(rng.choice([0, 1, 99, 10**9, 10**10, -5]))
    length = rng.choice([0, 1, 2, 5, 22, 35, 36, 64, 65, 300, 4001, 20_000])
    if rng.random() < 0.5:
        return "".join(rng.choice(_ALPHABET) for _ in range(min(length, 400))) * max(
            1, length // 400
        )
    return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(min(length, 400)))


def _fuzz_request(rng: random.Random, method: str, valid_sid: str) -> bytes:
    s = lambda: _fuzz_string(rng, valid_sid)  # noqa: E731
    sid = lambda: valid_sid if rng.random() < 0.5 else s()  # noqa: E731  # reach the other fields
    if method == "CreateSession":
        meta = {s()[:100]: s()[:300] for _ in range(rng.choice([0, 1, 3, 17]))}
        msg = pb.CreateSessionRequest(locale=s(), metadata=meta)
    elif method in ("SendMessage", "StreamMessage"):
        cls = pb.SendMessageRequest if method == "SendMessage" else pb.StreamMessageRequest
        rid = s()[:80] if rng.random() < 0.5 else ""  # request ids: valid, too long, non-ASCII
        msg = cls(session_id=sid(), text=s().replace("SLOW", "slow"), request_id=rid)
    elif method == "GetHistory":
        size = rng.choice([0, 1, 5, -1, 1000, 1001, 2**31 - 1, -(2**31)])
        msg = pb.GetHistoryRequest(session_id=sid(), page_size=size, page_token=s())
    else:
        msg = pb.DeleteSessionRequest(session_id=s())
    body = bytearray(msg.SerializeToString())
    kind = rng.random()
    if kind < 0.15:  # random bytes
        return rng.randbytes(rng.choice([1, 3, 10, 100, 1000]))
    if kind < 0.3 and body:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif kind < 0.4 and body:  # truncate
        del body[rng.randrange(len(body)) :]
    elif kind < 0.55:  # a string field holding invalid UTF-8
        raw = rng.choice(_BAD_UTF8) + rng.randbytes(rng.randint(0, 5))
        body += _str_field(rng.choice([1, 2, 3]), raw)
    elif kind < 0.6:  # an unknown field
        body += _str_field(rng.randint(4, 15), rng.randbytes(rng.randint(0, 50)))
    return bytes(body)


# What an ``rpc`` log line may hold: no field takes a string the client chose, except a
# well-formed session id (a request id appears only as its keyed hash).
_LOG_KEYS = {
    "event", "log_level", "method", "code", "latency_ms", "session_id", "session_id_hmac",
    "request_id_hmac", "error", "category", "action", "turn_index", "decided_by",
    "policy_version", "withheld", "turns", "replayed", "rejected", "retry_after_ms",
    "queued_ms",
}  # fmt: skip


def _status(channel: grpc.Channel, method: str, body: bytes) -> grpc.StatusCode:
    try:
        _call(channel, method, body)
    except grpc.RpcError as exc:
        assert not INTERNAL_NAMES.search(exc.details() or ""), (method, body, exc.details())
        return exc.code()
    return grpc.StatusCode.OK


def test_fuzzed_requests_never_get_unknown_or_internal(served, channel):
    rng = random.Random(16)
    valid_sid = served.client.create_session()
    served.client.send(valid_sid, "hello")
    methods = [*UNARY, "StreamMessage"]
    seen: dict[grpc.StatusCode, int] = {}
    started = time.perf_counter()
    with capture_logs() as logs:
        for i in range(5000):
            method = methods[i % len(methods)]
            body = _fuzz_request(rng, method, valid_sid)
            code = _status(channel, method, body)
            assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (method, body)
            seen[code] = seen.get(code, 0) + 1
            if method == "DeleteSession" and code == grpc.StatusCode.OK:
                valid_sid = served.client.create_session()  # keep fuzzing a live session
        for _ in range(300):  # the other services get raw bytes too
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check", request_serializer=_identity
            )
            try:
                check(rng.randbytes(rng.randint(1, 40)), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == INVALID
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    assert seen.get(INVALID, 0) > 1000 and seen.get(grpc.StatusCode.OK, 0) > 300, seen
    rpc_lines = [e for e in logs if e["event"] == "rpc"]
    assert len(rpc_lines) >= 5000
    for line in rpc_lines:
        assert set(line) <= _LOG_KEYS, line
        assert is_valid_session_id(line.get("session_id", "A" * 22)), line
        assert re.fullmatch("[0-9a-f]{12}", line.get("request_id_hmac", "0" * 12)), line
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert served.client.history(valid_sid) is not None  # the service still answers real calls
    assert elapsed < 60, elapsed


def test_undecodable_request_without_a_key_is_unauthenticated_first():
    companion = Companion(FakeGuard(), ScriptGenerator(), InMemorySessionStore())
    settings = test_settings(api_keys=["key-a-0123456789abcdef"]).replace(warmup=False)
    with (
        run_test_server(companion, settings=settings) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        error = _raw(ch, "SendMessage", b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
