"""Who may call, and how often: API keys, per-key rate limits, and a brake on key guessing.

- Keys: ``authorization: Bearer <key>`` is compared in constant time with every configured
  key; the caller's owner id is a hash of the key, never the key.
- Per key (``key_rate_limit``, ``key_rate_burst``): a token bucket per API key; a call that
  finds its key's bucket empty gets RESOURCE_EXHAUSTED with ``retry_after_ms``.
- Per client address (``auth_failure_rate``, ``auth_failure_burst``): every failed
  authentication takes a token from the address's bucket; while it is empty, every call from
  that address gets RESOURCE_EXHAUSTED **before its key is looked at**, so a guesser learns
  nothing from those calls (issue 16 measured 965 wrong-key guesses per second). Addresses are
  IPv4 addresses and IPv6 /64 networks (one host usually has a whole /64).

Nothing here is logged or counted with a key or an address: the metrics have no such label,
and the log line gets ``peer_hmac``, a keyed hash of the address (:func:`._boundary.keyed_hash`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ResourceExhausted, Unauthenticated
from ._boundary import keyed_hash
from .metrics import Metrics

__all__ = ["AccessControl", "KeyedBuckets", "TokenBucket", "owner_of_key", "peer_address"]

Clock = Callable[[], float]

UNAUTHENTICATED_MESSAGE = "missing or invalid API key (authorization: Bearer <key>)"
MAX_TRACKED_PEERS = 10_000


def owner_of_key(key: str) -> str:
    """The owner id stored with sessions created by ``key``: a hash, so the key is never stored."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a call takes one.

    Args:
        rate: Tokens added per second.
        burst: The most tokens the bucket holds (it starts full).
        clock: Seconds, monotonic (tests pass a fake).
    """

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate={rate}, burst={burst}: need rate > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def available(self) -> bool:
        """True when a token is there (takes none)."""
        self._refill()
        return self._tokens >= 1

    def take(self) -> bool:
        """Take a token; False (and nothing taken) when the bucket is empty."""
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def full(self) -> bool:
        """True when the bucket is as if new (it can be forgotten)."""
        self._refill()
        return self._tokens >= self.burst

    def retry_after_ms(self) -> int:
        """Milliseconds until the next token, at least 1."""
        self._refill()
        return max(1, math.ceil((1 - self._tokens) / self.rate * 1000))


class KeyedBuckets:
    """One :class:`TokenBucket` per name, at most ``max_names`` of them (the least recently
    used goes first: a full bucket is the same as a new one, so forgetting one rarely matters).
    """

    def __init__(
        self, rate: float, burst: int, max_names: int, clock: Clock = time.monotonic
    ) -> None:
        TokenBucket(rate, burst, clock)  # validates the parameters
        self.rate, self.burst, self.max_names, self._clock = rate, burst, max_names, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, name: str) -> TokenBucket:
        """The bucket of ``name`` (a new, full one if it has none)."""
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self._clock)
            self._buckets[name] = bucket
            while len(self._buckets) > self.max_names:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(name)
        return bucket

    def peek(self, name: str) -> TokenBucket | None:
        """The bucket of ``name`` if it has one that is not full; forgets a full one."""
        bucket = self._buckets.get(name)
        if bucket is not None and bucket.full():
            del self._buckets[name]
            return None
        return bucket


def peer_address(peer: str) -> str:
    """The address a client is limited by, from grpc's ``context.peer()``:
    ``ipv4:203.0.113.7:5150`` -> ``203.0.113.7``; ``ipv6:[2001:db8::1]:5150`` ->
    ``2001:db8::/64``; ``ipv6:[::ffff:203.0.113.7]:5150`` (IPv4 on a dual-stack socket) ->
    ``203.0.113.7``; anything else (``unix:...``) by its kind."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = (rest.rsplit(":", 1)[0] if rest.startswith("[") else rest).strip("[]")
        try:
            ip = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return host
        if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket ("[::]")
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return kind if rest else peer


class AccessControl:
    """API keys and the two throttles, for the interceptor.

    Args:
        metrics: Where failed authentications and refusals are counted.
        api_keys: Accepted bearer keys; empty turns all of this off.
        key_rate: Calls per second per key (``None``: unlimited); ``key_burst`` at once.
        failure_rate: Failed authentications per second per address (``None``: unlimited);
            ``failure_burst`` at once.
        clock: Seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self,
        metrics: Metrics,
        api_keys: Sequence[str] = (),
        *,
        key_rate: float | None = None,
        key_burst: int = 20,
        failure_rate: float | None = None,
        failure_burst: int = 10,
        clock: Clock = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._keys = [k.encode() for k in api_keys]
        self._per_key = (
            None
            if key_rate is None
            else KeyedBuckets(key_rate, key_burst, max(len(self._keys), 1), clock)
        )
        self._failures = (
            None
            if failure_rate is None
            else KeyedBuckets(failure_rate, failure_burst, MAX_TRACKED_PEERS, clock)
        )

    @property
    def enabled(self) -> bool:
        """True when keys are required."""
        return bool(self._keys)

    def admit(self, metadata: Any, peer: str, method: str, fields: dict[str, Any]) -> str | None:
        """The caller's owner id (``None`` when keys are off).

        Raises:
            ResourceExhausted: the address failed too often lately, or the key's rate limit
                is reached (with ``retry_after_ms``).
            Unauthenticated: keys are on and the call has none that matches.
        """
        if not self._keys:
            return None
        address = peer_address(peer)
        throttled = self._failures.peek(address) if self._failures is not None else None
        if throttled is not None and not throttled.available():
            self._refuse(method, "auth_throttled", fields, address)
            hint = throttled.retry_after_ms()
            raise ResourceExhausted(
                f"too many failed authentications from this address; retry after about {hint} ms",
                retry_after_ms=hint,
            )
        key = _bearer(metadata)
        matched: bytes | None = None
        for candidate in self._keys:  # every key: timing does not reveal which matched
            if hmac.compare_digest(key, candidate):
                matched = candidate
        if matched is None:
            self.metrics.auth_failures.inc()
            fields["peer_hmac"] = keyed_hash(address)
            if self._failures is not None:
                self._failures.get(address).take()
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        owner = owner_of_key(matched.decode())
        if self._per_key is not None:
            bucket = self._per_key.get(owner)
            if not bucket.take():
                self._refuse(method, "rate_limited", fields)
                hint = bucket.retry_after_ms()
                raise ResourceExhausted(
                    f"this API key's rate limit is reached; retry after about {hint} ms",
                    retry_after_ms=hint,
                )
        return owner

    def _refuse(
        self, method: str, reason: str, fields: dict[str, Any], address: str | None = None
    ) -> None:
        self.metrics.rejected.labels(method, reason).inc()
        fields["rejected"] = reason
        if address is not None:
            fields["peer_hmac"] = keyed_hash(address)


def _bearer(metadata: Any) -> bytes:
    header = ""
    for key, value in metadata or ():
        if key == "authorization":
            header = value if isinstance(value, str) else value.decode("utf-8", "replace")
    scheme, _, token = header.partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""
