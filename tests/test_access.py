"""API keys, per-key rate limits and the brake on failed authentications: token buckets with a
fake clock, then a real server on a port."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from structlog.testing import capture_logs

from companion import Companion, PermissionDenied, ResourceExhausted, Unauthenticated
from companion._proto.companion.v1 import companion_pb2 as pb
from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from companion.client import AsyncCompanionClient
from companion.server import ServerSettings
from companion.server._access import KeyedBuckets, TokenBucket, peer_address
from companion.sessions import InMemorySessionStore
from companion.testing import TestServer, run_test_server, test_settings

from .fakes import FakeGenerator, FakeGuard

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
WRONG = "wrong-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- buckets -----------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after_ms() == 500  # one token at 2 per second
    clock.now += 0.25
    assert not bucket.take() and bucket.retry_after_ms() == 250
    clock.now += 0.25
    assert bucket.take() and not bucket.take()
    clock.now += 60  # refills to the burst, never beyond it
    assert bucket.full() and [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_token_bucket_parameters_are_checked():
    for rate, burst in ((0, 1), (-1, 1), (1, 0)):
        with pytest.raises(ValueError, match="need rate > 0 and burst >= 1"):
            TokenBucket(rate, burst)


def test_keyed_buckets_are_bounded_and_forget_full_ones():
    clock = Clock()
    buckets = KeyedBuckets(rate=1.0, burst=1, max_names=3, clock=clock)
    for name in "abcd":
        assert buckets.get(name).take()
    assert len(buckets) == 3 and buckets.peek("a") is None  # the oldest went first
    assert buckets.peek("d") is not None and not buckets.peek("d").available()
    clock.now += 1
    assert buckets.peek("d") is None and len(buckets) == 2  # full again: forgotten


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:203.0.113.7:5150", "203.0.113.7"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:5150", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2::9%5D:5150", "2001:db8:1:2::/64"),
        ("ipv6:[::1]:40000", "::/64"),
        ("ipv6:[::ffff:203.0.113.7]:5150", "203.0.113.7"),  # IPv4 on a dual-stack socket
        ("ipv6:[::ffff:198.51.100.9]:5150", "198.51.100.9"),
        ("unix:/run/companion.sock", "unix"),
    ],
)
def test_peer_address_drops_the_port_and_groups_ipv6_by_64(peer, address):
    assert peer_address(peer) == address


def test_rate_settings_default_and_turn_off():
    s = ServerSettings()
    assert s.key_rate_limit is None and s.key_rate_burst == 20
    assert s.auth_failure_rate == 1.0 and s.auth_failure_burst == 10
    env = {"COMPANION_KEY_RATE_LIMIT": "5", "COMPANION_AUTH_FAILURE_RATE": "off"}
    s = ServerSettings.from_env(env)
    assert s.key_rate_limit == 5.0 and s.auth_failure_rate is None
    with pytest.raises(ValueError, match="key_rate_limit"):
        ServerSettings(key_rate_limit=0)


# --- on a real server --------------------------------------------------------------------


def _companion() -> Companion:
    return Companion(FakeGuard(), FakeGenerator(["I hear you."] * 50), InMemorySessionStore())


@pytest.fixture
def limited() -> Iterator[TestServer]:
    """Keys A and B, 3 calls at once then 0.2 a second per key; 3 failed authentications at
    once then 0.2 a second per address."""
    settings = test_settings(api_keys=[KEY_A, KEY_B]).replace(
        warmup=False,
        key_rate_limit=0.2,
        key_rate_burst=3,
        auth_failure_rate=0.2,
        auth_failure_burst=3,
    )
    with run_test_server(_companion(), settings=settings) as server:
        yield server


def _metrics(server: TestServer) -> str:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    return str(urllib.request.urlopen(url, timeout=5).read().decode())


def _rpc_lines(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "rpc"]


def test_a_key_past_its_rate_gets_resource_exhausted_with_a_hint(limited):
    a, b = limited.client, limited.new_client(api_key=KEY_B)
    with capture_logs() as logs:
        sid = a.create_session()
        a.history(sid)
        a.send(sid, "hello")
        with pytest.raises(ResourceExhausted, match=r"^RESOURCE_EXHAUSTED: this API key") as err:
            a.history(sid)
        time.sleep(0.2)
    assert err.value.retry_after_ms is not None and 1000 <= err.value.retry_after_ms <= 5000
    assert b.create_session()  # another key has a bucket of its own
    line = _rpc_lines(logs)[-1]
    assert line["rejected"] == "rate_limited" and line["code"] == "RESOURCE_EXHAUSTED"
    assert KEY_A not in repr(logs)
    body = _metrics(limited)
    assert 'companion_rejected_rpcs_total{method="GetHistory",reason="rate_limited"} 1.0' in body


def test_rate_limited_call_carries_retry_after_ms_trailing_metadata(limited):
    with grpc.insecure_channel(limited.address) as ch:
        stub = pb_grpc.CompanionServiceStub(ch)
        auth = [("authorization", f"Bearer {KEY_A}")]
        for _ in range(3):
            stub.CreateSession(pb.CreateSessionRequest(), metadata=auth, timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateSession(pb.CreateSessionRequest(), metadata=auth, timeout=5)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(err.value.trailing_metadata())
    assert int(trailing["retry-after-ms"]) > 0


def test_failed_authentications_are_braked_per_address(limited):
    guesser = limited.new_client(api_key=WRONG, retries=0)
    with capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(Unauthenticated, match=r"^UNAUTHENTICATED: missing or invalid"):
                guesser.create_session()
        with pytest.raises(ResourceExhausted, match="too many failed authentications") as err:
            guesser.create_session()
        # The brake is on the address, before any key is looked at: a right key from the same
        # address waits too, so a guess that happens to be right tells the guesser nothing.
        with pytest.raises(ResourceExhausted):
            limited.client.create_session()
        time.sleep(0.2)
    assert err.value.retry_after_ms is not None and err.value.retry_after_ms > 0
    lines = _rpc_lines(logs)
    assert [e["code"] for e in lines] == ["UNAUTHENTICATED"] * 3 + ["RESOURCE_EXHAUSTED"] * 2
    assert [e.get("rejected") for e in lines[3:]] == ["auth_throttled"] * 2
    hashes = {e["peer_hmac"] for e in lines}
    assert len(hashes) == 1 and len(hashes.pop()) == 12  # one address, as a keyed hash
    text = repr(logs)
    assert WRONG not in text and KEY_A not in text and "127.0.0.1" not in repr(lines)
    body = _metrics(limited)
    assert "companion_auth_failures_total 3.0" in body
    assert 'reason="auth_throttled"} 2.0' in body
    assert "127.0.0.1" not in body and WRONG not in body


def test_key_guessing_is_slow(limited):
    """Issue 16 measured 965 wrong-key guesses per second; now an address gets the burst,
    then the rate."""
    guesser = limited.new_client(api_key=WRONG, retries=0, timeout=5)
    answered: dict[str, int] = {"unauthenticated": 0, "throttled": 0}
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        try:
            guesser.create_session()
        except Unauthenticated:
            answered["unauthenticated"] += 1
        except ResourceExhausted:
            answered["throttled"] += 1
    elapsed = time.monotonic() - started
    assert answered["unauthenticated"] <= 3 + 0.2 * elapsed + 1
    assert answered["throttled"] > 10  # the guesser kept trying and learnt nothing


def test_without_the_brake_every_wrong_key_is_checked():
    settings = test_settings(api_keys=[KEY_A]).replace(warmup=False, auth_failure_rate="off")
    with run_test_server(_companion(), settings=settings) as server:
        guesser = server.new_client(api_key=WRONG, retries=0)
        for _ in range(15):
            with pytest.raises(Unauthenticated):
                guesser.create_session()
        assert server.client.create_session()


def test_no_keys_no_limits():
    settings = test_settings().replace(warmup=False, key_rate_limit=0.1, key_rate_burst=1)
    with run_test_server(_companion(), settings=settings) as server:
        for _ in range(5):
            server.client.create_session()


def test_unauthenticated_is_its_own_error_and_a_permission_denied(limited):
    cl = limited.new_client(api_key=None, retries=0)
    with pytest.raises(Unauthenticated) as err:
        cl.create_session()
    assert isinstance(err.value, PermissionDenied)  # what the clients raised before


async def test_async_client_maps_unauthenticated(limited):
    async with AsyncCompanionClient(limited.address, api_key=WRONG, retries=0) as cl:
        with pytest.raises(Unauthenticated, match=r"^UNAUTHENTICATED"):
            await cl.create_session()
