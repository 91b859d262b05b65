"""One turn's hold on its session in Redis: a lease with an owner token (redis-py's ``Lock``).

A turn reads the session's history, generates for seconds, then appends. Two replicas running
turns of one session at once would each generate from the history before the other's turn,
and the one stored second would hold a reply written without the first (a check-in asked by
one would not be read as answered by the other). So a turn on a shared store takes the
session's lock before it reads the history and gives it back after its append; within one
process the generation queue already runs turns one at a time.

Never a lock without a timeout: the lock is a Redis key that expires ``lease`` seconds after
it was taken or last renewed, and the turn renews it as it generates (:meth:`RedisTurnLock.keep`),
so a replica killed mid-turn holds it for at most ``lease`` seconds. The key holds a random
owner token; only its owner renews or releases it (redis-py's scripts compare the token), and
the append script stores a turn only while its token is still the key's (a fencing check): a
turn whose lease lapsed (a paused process, a model stalled past the lease) stores nothing and
gets ``Unavailable``, and its retry runs again on the history as it is then. A turn waits at
most ``wait`` seconds for the lock (less when its call ends first), then gets ``Unavailable``.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from .._logging import get_logger
from ..errors import Cancelled, Unavailable
from ..protocols import ShouldStop

if TYPE_CHECKING:
    import redis

__all__ = ["RedisTurnLock"]

log = get_logger("companion.sessions")

Guard = Callable[[str], AbstractContextManager[None]]


class RedisTurnLock:
    """An exclusive, expiring hold on one session for one turn.

    Made by :meth:`RedisSessionStore.lock_turn` (already acquired); see the module docstring.

    Args:
        client: The store's Redis client.
        key: The session's lock key.
        lease: Seconds the hold lasts unless renewed.
        guard: The store's error mapping (Redis errors become ``Unavailable``).
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        lease: float,
        guard: Guard,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key, self.lease = key, lease
        self._lock = client.lock(key, timeout=lease, thread_local=False)
        self._guard, self._clock = guard, clock
        self._renewed = 0.0
        self.token = b""  # the owner token while held, else empty
        self.waited_ms = 0.0

    def acquire(self, wait: float, should_stop: ShouldStop) -> None:
        """Take the lock, waiting at most ``wait`` seconds.

        Raises:
            Unavailable: another turn held it all that time, or Redis cannot be reached.
            Cancelled: ``should_stop()`` became true while waiting.
        """
        started = self._clock()
        deadline = started + wait
        token = secrets.token_hex(16)
        pause = 0.005
        while True:
            with self._guard("lock"):
                if self._lock.acquire(blocking=False, token=token):
                    break
            now = self._clock()
            if should_stop():
                raise Cancelled("the turn was cancelled while another turn of its session ran")
            if now >= deadline:
                raise Unavailable(
                    f"another turn of this session held it for {wait:g} s; nothing was stored;"
                    " retry"
                )
            # Jittered, growing pauses: waiters on two replicas do not poll in step.
            time.sleep(min(pause * (0.5 + random.random()), max(deadline - now, 0.0)))
            pause = min(pause * 2, 0.05)
        self.token = self._lock.local.token
        self._renewed = self._clock()
        self.waited_ms = round((self._renewed - started) * 1000, 2)

    def keep(self) -> None:
        """Renew the lease once a third of it has passed (cheap to call for every token).

        Raises:
            Unavailable: the lease lapsed and the lock is gone or another turn's, or Redis
                cannot be reached; the turn must not be stored.
        """
        if not self.token:
            raise Unavailable("the turn does not hold its session's lock; retry")
        if self._clock() - self._renewed < self.lease / 3:
            return
        from redis.exceptions import LockNotOwnedError

        with self._guard("lock"):
            try:
                self._lock.reacquire()
            except LockNotOwnedError:
                self.token = b""
        if not self.token:
            log.warning("turn_lock_lost", lease_s=self.lease)
            raise Unavailable("the turn outlived its session lock; nothing was stored; retry")
        self._renewed = self._clock()

    def release(self) -> None:
        """Give the session back; a no-op when not held. Never raises: a lock that cannot be
        released (its lease lapsed, Redis is down) expires by itself within the lease."""
        if not self.token:
            return
        self.token = b""
        from redis.exceptions import LockError, RedisError

        try:
            self._lock.release()
        except LockError:
            log.warning("turn_lock_lapsed", lease_s=self.lease)
        except RedisError as exc:
            log.warning("turn_lock_not_released", error=type(exc).__name__, lease_s=self.lease)

    def __enter__(self) -> RedisTurnLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
