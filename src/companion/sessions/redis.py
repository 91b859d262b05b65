"""A Redis session store, for several server processes sharing one conversation store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .._logging import get_logger
from ..errors import DuplicateRequest, SessionNotFound, Unavailable
from ..protocols import ShouldStop, TurnLock
from ..types import SessionInfo, StoredRequest, Turn
from ._limits import owner_full, session_full
from ._lock import RedisTurnLock
from ._redis_format import describe_url, glob_escape, turn_from_json, turn_json
from ._redis_scripts import APPEND, RESERVE

if TYPE_CHECKING:
    import redis

__all__ = ["DEFAULT_REDIS_URL", "DEFAULT_TTL_SECONDS", "RedisSessionStore"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600

log = get_logger("companion.sessions")

T = TypeVar("T")


class RedisSessionStore:
    """Sessions and turns in Redis; every process pointed at the same server shares them.

    Each session has up to three keys, ``<prefix>session:{<id>}`` (its info, JSON),
    ``<prefix>turns:{<id>}`` (a list of turns, JSON; a turn's index is its position) and, once
    a turn came with a request id, ``<prefix>requests:{<id>}`` (a hash of request ids). The
    braces keep them in one Redis Cluster slot. A turn pair and its request id are written by
    one Lua script, so two processes appending to one session get distinct, gapless indexes
    and a request id is stored once. Retention: the keys expire ``ttl_seconds`` after the
    session was created (the service's ``session_max_age_seconds``); a turn does not extend
    it. :meth:`delete` removes all of them. Each owner (API key) has one more key,
    ``<prefix>owner:{<owner>}``, a sorted set of its sessions' ids by creation time, for the
    sessions-per-owner quota; a deleted or purged session leaves it at once, an expired one
    at the owner's next create or the next :meth:`purge_expired`. While a turn runs there is
    one more, ``<prefix>lock:{<id>}``.

    Turns of one session run one at a time across every process on the store: the pipeline
    holds the session's turn lock (:meth:`lock_turn`, a lease of ``lock_seconds`` with an
    owner token, renewed as the turn generates) from its history read to its append, and the
    append checks the token (``companion.sessions._lock`` says why and how).

    A Redis that is down, refuses the connection or does not answer within the timeouts raises
    :class:`~companion.errors.Unavailable` (the service's UNAVAILABLE). Nothing is retried: an
    append that timed out may still have been applied by the server, and retrying it could store
    the pair twice.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/socket``. Never logged with its password.
        ttl_seconds: Retention: a session expires this long after its creation (default 30
            days).
        connect_timeout: Seconds to wait for a connection.
        timeout: Seconds to wait for each reply.
        prefix: Prepended to every key.
        lock_seconds: Lease of a turn's session lock: how long a replica that died mid-turn
            holds its session (renewed while a turn runs).
        lock_wait_seconds: How long a turn waits for another turn of its session.
        client: A ready ``redis.Redis`` client to use instead of one made from ``url`` (it
            must decode responses); the store closes it.

    Raises:
        ImportError: the ``redis`` package is missing (``pip install 'companion[redis]'``).
        ValueError: a TTL, timeout or lock time that is not positive.
    """

    def __init__(
        self,
        url: str = DEFAULT_REDIS_URL,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        prefix: str = "companion:",
        lock_seconds: float = 10.0,
        lock_wait_seconds: float = 30.0,
        client: redis.Redis | None = None,
    ) -> None:
        if not (isinstance(ttl_seconds, int) and ttl_seconds >= 1):
            raise ValueError(f"ttl_seconds={ttl_seconds!r}: must be a whole number >= 1")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("timeout", timeout),
            ("lock_seconds", lock_seconds),
            ("lock_wait_seconds", lock_wait_seconds),
        ):
            if not value > 0:
                raise ValueError(f"{name}={value!r}: must be > 0 seconds")
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ImportError(
                "RedisSessionStore needs the redis package: pip install 'companion[redis]'"
                " (or 'redis>=5,<7')"
            ) from exc
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)
        self._timeouts: tuple[type[Exception], ...] = (redis.TimeoutError,)
        self._unreachable: tuple[type[Exception], ...] = (redis.ConnectionError,)
        self.url = describe_url(url)
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix
        self.lock_seconds, self.lock_wait_seconds = lock_seconds, lock_wait_seconds
        self._client: redis.Redis = client or redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # see the class docstring: never re-run an append
        )
        self._append = self._client.register_script(APPEND)
        self._reserve = self._client.register_script(RESERVE)
        log.info("session_store", backend="redis", url=self.url, ttl_seconds=ttl_seconds)

    def __repr__(self) -> str:
        return f"RedisSessionStore({self.url!r}, ttl_seconds={self.ttl_seconds})"

    def owner_key(self, owner: str) -> str:
        """The key of ``owner``'s sorted set of session ids."""
        return f"{self.prefix}owner:{{{owner}}}"

    def keys(self, session_id: str) -> tuple[str, str, str]:
        """The session's keys: its info, its turns and its request ids."""
        return (
            f"{self.prefix}session:{{{session_id}}}",
            f"{self.prefix}turns:{{{session_id}}}",
            f"{self.prefix}requests:{{{session_id}}}",
        )

    def lock_key(self, session_id: str) -> str:
        """The key of the session's turn lock (present only while a turn runs)."""
        return f"{self.prefix}lock:{{{session_id}}}"

    def lock_turn(self, session_id: str, should_stop: ShouldStop) -> RedisTurnLock:
        """Take the session's turn lock, for one turn: pass it to :meth:`append`, then
        release it (it is a context manager too).

        Raises:
            Unavailable: another turn held it for ``lock_wait_seconds``, or Redis cannot be
                reached.
            Cancelled: ``should_stop()`` became true while waiting.
        """
        key = self.lock_key(session_id)
        lock = RedisTurnLock(self._client, key, self.lock_seconds, self._redis)
        lock.acquire(self.lock_wait_seconds, should_stop)
        return lock

    @contextmanager
    def _redis(self, operation: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            # The exception names host and port at most; its type is enough for the log.
            reason = "error"
            if isinstance(exc, self._timeouts):
                reason = "timeout"
            elif isinstance(exc, self._unreachable):
                reason = "unreachable"
            elif str(exc).startswith("OOM"):  # maxmemory reached: Redis's "disk full"
                reason = "full"
            log.warning(
                "session_store_unavailable",
                backend="redis",
                operation=operation,
                error=type(exc).__name__,
                reason=reason,
            )
            raise Unavailable(
                f"the session store is unavailable ({type(exc).__name__}); retry",
                component="store",
                reason=reason,
            ) from exc

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        with self._redis(operation):
            return fn()

    def create(self, info: SessionInfo, max_per_owner: int | None = None) -> None:
        """Store a new session; with ``max_per_owner``, unless its owner holds that many.

        Raises:
            ValueError: a session with this id exists.
            ResourceExhausted: the owner holds ``max_per_owner`` sessions already.
            Unavailable: Redis cannot be reached.
        """
        value = json.dumps(
            {
                "locale": info.locale,
                "created_at": info.created_at,
                "owner": info.owner,
                "metadata": dict(info.metadata),
            },
            ensure_ascii=False,
        )
        key, owned = self.keys(info.id)[0], self.owner_key(info.owner)
        expired = info.created_at - self.ttl_seconds
        limit = -1 if max_per_owner is None else max_per_owner
        args: list[str | int | float] = [info.created_at, expired, limit, info.id, self.ttl_seconds]
        reserved = int(self._call("create", lambda: self._reserve(keys=[owned], args=args)))
        if reserved == 0:
            raise owner_full(limit)
        done = self._call(
            "create", lambda: self._client.set(key, value, nx=True, ex=self.ttl_seconds)
        )
        if not done:
            if reserved == 1:  # our reservation, for an id that was taken
                self._call("create", lambda: self._client.zrem(owned, info.id))
            raise ValueError("session id already exists")

    def get(self, session_id: str) -> SessionInfo | None:
        """The session, or ``None`` (also once it expired)."""
        key = self.keys(session_id)[0]
        raw: Any = self._call("get", lambda: self._client.get(key))
        if raw is None:
            return None
        data = json.loads(raw)
        return SessionInfo(
            session_id, data["locale"], data["created_at"], data["owner"], data["metadata"]
        )

    def append(
        self,
        session_id: str,
        turns: Sequence[Turn],
        request_id: str | None = None,
        outcome: str = "",
        lock: TurnLock | None = None,
        *,
        max_turns: int | None = None,
    ) -> list[Turn]:
        """Append ``turns`` atomically (one script), with ``request_id`` and ``outcome`` if
        given; returns them with indices set. They expire with the session. With ``lock``
        (from :meth:`lock_turn`), only while it still holds the session.

        Raises:
            SessionNotFound: no such session.
            DuplicateRequest: ``request_id`` already names turns of this session.
            FailedPrecondition: the session would hold more than ``max_turns`` turns.
            Unavailable: Redis cannot be reached, or ``lock`` no longer holds the session.
        """
        rows = [turn_json(t) for t in turns]
        keys = [*self.keys(session_id), self.lock_key(session_id)]
        if lock is not None and not isinstance(lock, RedisTurnLock):
            raise TypeError(f"lock must come from this store's lock_turn, not {lock!r}")
        token = lock.token if lock is not None else b""
        if lock is not None and not token:
            raise Unavailable("the turn does not hold its session's lock; retry")
        limit = -1 if max_turns is None else max_turns
        args: list[str | int | bytes] = [
            self.ttl_seconds,
            request_id or "",
            outcome,
            limit,
            token,
            *rows,
        ]
        start = int(self._call("append", lambda: self._append(keys=keys, args=args)))
        if start == -1:
            raise SessionNotFound(f"session {session_id} not found")
        if start == -2:
            raise DuplicateRequest("the session already holds turns under this request id")
        if start == -3:
            raise session_full(limit)
        if start == -4:
            log.warning("turn_lock_lapsed", lease_s=self.lock_seconds, operation="append")
            raise Unavailable("the turn outlived its session lock; nothing was stored; retry")
        return [
            Turn(t.role, t.text, t.timestamp, t.category, t.action, dict(t.scores), start + i)
            for i, t in enumerate(turns)
        ]

    def find_request(self, session_id: str, request_id: str) -> StoredRequest | None:
        """The turns stored under ``request_id``, or ``None``.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        _, turns_key, requests_key = self.keys(session_id)
        found: Any = self._call("find_request", lambda: self._client.hget(requests_key, request_id))
        if found is None:
            return None
        first, count, outcome = str(found).split(" ", 2)
        start, n = int(first), int(count)
        # Turns are only ever appended, so the range still holds them unless the session was
        # deleted in between (then it is empty).
        rows: Any = self._call(
            "find_request", lambda: self._client.lrange(turns_key, start, start + n - 1)
        )
        if len(rows) != n:
            return None
        return StoredRequest(
            request_id, tuple(turn_from_json(r, start + i) for i, r in enumerate(rows)), outcome
        )

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """Turns in order from ``offset``, at most ``limit``.

        Raises:
            SessionNotFound: no such session.
            Unavailable: Redis cannot be reached.
        """
        info_key, turns_key, _ = self.keys(session_id)
        end = -1 if limit is None else offset + limit - 1

        def read() -> list[Any]:
            with self._client.pipeline(transaction=True) as p:  # one snapshot: MULTI/EXEC
                p.exists(info_key)
                if limit != 0:
                    p.lrange(turns_key, offset, end)
                return p.execute()

        replies = self._call("history", read)
        if not replies[0]:
            raise SessionNotFound(f"session {session_id} not found")
        rows: list[str] = replies[1] if limit != 0 else []
        return [turn_from_json(raw, offset + i) for i, raw in enumerate(rows)]

    def recent(self, session_id: str, limit: int) -> list[Turn]:
        """The newest ``limit`` turns, oldest first (one snapshot: MULTI/EXEC).

        Raises:
            SessionNotFound: no such session.
            Unavailable: Redis cannot be reached.
        """
        info_key, turns_key, _ = self.keys(session_id)

        def read() -> list[Any]:
            with self._client.pipeline(transaction=True) as p:
                p.exists(info_key)
                p.llen(turns_key)
                if limit > 0:
                    p.lrange(turns_key, -limit, -1)
                return p.execute()

        replies = self._call("recent", read)
        if not replies[0]:
            raise SessionNotFound(f"session {session_id} not found")
        rows: list[str] = replies[2] if limit > 0 else []
        first = int(replies[1]) - len(rows)
        return [turn_from_json(raw, first + i) for i, raw in enumerate(rows)]

    def delete(self, session_id: str) -> bool:
        """Erase the session, its turns and its request ids (every key, its turn lock and its
        entry in its owner's set); False if unknown.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        info_key, turns_key, requests_key = self.keys(session_id)
        raw: Any = self._call("delete", lambda: self._client.get(info_key))
        owner = json.loads(raw)["owner"] if raw is not None else None

        def erase() -> list[Any]:
            with self._client.pipeline(transaction=True) as p:
                p.delete(info_key)
                p.delete(turns_key, requests_key, self.lock_key(session_id))
                if owner is not None:
                    p.zrem(self.owner_key(owner), session_id)
                return p.execute()

        removed_info = self._call("delete", erase)[0]
        return bool(removed_info)

    def purge_expired(self, created_before: float) -> int:
        """Erase every session created before ``created_before``, as :meth:`delete` does, and
        drop expired ids from the owners' sets; returns how many sessions. Redis expires the
        keys itself (``ttl_seconds``); this catches the sessions made under a longer TTL than
        the one configured now. It scans every session key: O(sessions).

        Raises:
            Unavailable: Redis cannot be reached.
        """
        prefix, purged = glob_escape(self.prefix), 0
        with self._redis("purge"):
            keys = list(self._client.scan_iter(match=prefix + "session:*", count=1000))
            for at in range(0, len(keys), 500):
                batch = keys[at : at + 500]
                values: list[Any] = self._client.mget(batch)  # type: ignore[assignment]
                for key, raw in zip(batch, values, strict=True):
                    if raw is not None and json.loads(raw)["created_at"] < created_before:
                        purged += self.delete(key[key.index("{") + 1 : key.rindex("}")])
            for owned in self._client.scan_iter(match=prefix + "owner:*", count=1000):
                self._client.zremrangebyscore(owned, "-inf", f"({created_before}")
        return purged

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()
