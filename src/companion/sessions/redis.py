"""A Redis session store, for several server processes sharing one conversation store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .._logging import get_logger
from ..errors import SessionNotFound, Unavailable
from ..types import Action, Category, Role, SessionInfo, Turn

if TYPE_CHECKING:
    import redis

__all__ = ["DEFAULT_REDIS_URL", "DEFAULT_TTL_SECONDS", "RedisSessionStore"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600

log = get_logger("companion.sessions")

T = TypeVar("T")

# KEYS[1] the session's info, KEYS[2] its turns (a list: a turn's index is its position).
# ARGV[1] the TTL in seconds, ARGV[2..] the turns as JSON. Redis runs a script alone, so the
# length read and the push cannot interleave with another process's append: indexes never
# collide and a pair stays adjacent. Returns the first new index, or -1 for no such session.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local start = redis.call('LLEN', KEYS[2])
if #ARGV > 1 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 2))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return start
"""


def _describe_url(url: str) -> str:
    """``url`` without credentials or query, for logs and reprs: ``redis://host:port/db``.

    The password can sit in the user part or in a ``?password=`` query: neither is kept.
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # a malformed port: say nothing more about the URL
        port = ":?"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


class RedisSessionStore:
    """Sessions and turns in Redis; every process pointed at the same server shares them.

    Each session has two keys, ``<prefix>session:{<id>}`` (its info, JSON) and
    ``<prefix>turns:{<id>}`` (a list of turns, JSON; a turn's index is its position). The braces
    keep both in one Redis Cluster slot. A turn pair is appended by one Lua script, so two
    processes appending to one session get distinct, gapless indexes. Both keys expire
    ``ttl_seconds`` after the session was created or last given a turn. :meth:`delete` removes
    both keys.

    A Redis that is down, refuses the connection or does not answer within the timeouts raises
    :class:`~companion.errors.Unavailable` (the service's UNAVAILABLE). Nothing is retried: an
    append that timed out may still have been applied by the server, and retrying it could store
    the pair twice.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/socket``. Never logged with its password.
        ttl_seconds: Retention: a session expires this long after its last turn (default 30
            days).
        connect_timeout: Seconds to wait for a connection.
        timeout: Seconds to wait for each reply.
        prefix: Prepended to every key.
        client: A ready ``redis.Redis`` client to use instead of one made from ``url`` (it
            must decode responses); the store closes it.

    Raises:
        ImportError: the ``redis`` package is missing (``pip install 'companion[redis]'``).
        ValueError: a TTL or timeout that is not positive.
    """

    def __init__(
        self,
        url: str = DEFAULT_REDIS_URL,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        prefix: str = "companion:",
        client: redis.Redis | None = None,
    ) -> None:
        if not (isinstance(ttl_seconds, int) and ttl_seconds >= 1):
            raise ValueError(f"ttl_seconds={ttl_seconds!r}: must be a whole number >= 1")
        for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
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
        self.url = _describe_url(url)
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix
        self._client: redis.Redis = client or redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # see the class docstring: never re-run an append
        )
        self._append = self._client.register_script(_APPEND)
        log.info("session_store", backend="redis", url=self.url, ttl_seconds=ttl_seconds)

    def __repr__(self) -> str:
        return f"RedisSessionStore({self.url!r}, ttl_seconds={self.ttl_seconds})"

    def keys(self, session_id: str) -> tuple[str, str]:
        """The session's two keys: its info and its turns."""
        return (f"{self.prefix}session:{{{session_id}}}", f"{self.prefix}turns:{{{session_id}}}")

    @contextmanager
    def _redis(self, operation: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            # The exception names host and port at most; its type is enough for the log.
            log.warning(
                "session_store_unavailable",
                backend="redis",
                operation=operation,
                error=type(exc).__name__,
            )
            raise Unavailable(
                f"the session store is unavailable ({type(exc).__name__}); retry"
            ) from exc

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        with self._redis(operation):
            return fn()

    def create(self, info: SessionInfo) -> None:
        """Store a new session.

        Raises:
            ValueError: a session with this id exists.
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
        key = self.keys(info.id)[0]
        done = self._call(
            "create", lambda: self._client.set(key, value, nx=True, ex=self.ttl_seconds)
        )
        if not done:
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

    def append(self, session_id: str, turns: Sequence[Turn]) -> list[Turn]:
        """Append ``turns`` atomically (one script); returns them with indices set, and
        refreshes the session's TTL.

        Raises:
            SessionNotFound: no such session.
            Unavailable: Redis cannot be reached.
        """
        rows = [
            json.dumps(
                {
                    "role": t.role.value,
                    "text": t.text,
                    "ts": t.timestamp,
                    "category": t.category.value,
                    "action": t.action.value,
                    "scores": dict(t.scores),
                },
                ensure_ascii=False,
            )
            for t in turns
        ]
        keys = self.keys(session_id)
        start = int(
            self._call(
                "append", lambda: self._append(keys=list(keys), args=[self.ttl_seconds, *rows])
            )
        )
        if start < 0:
            raise SessionNotFound(f"session {session_id} not found")
        return [
            Turn(t.role, t.text, t.timestamp, t.category, t.action, dict(t.scores), start + i)
            for i, t in enumerate(turns)
        ]

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """Turns in order from ``offset``, at most ``limit``.

        Raises:
            SessionNotFound: no such session.
            Unavailable: Redis cannot be reached.
        """
        info_key, turns_key = self.keys(session_id)
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
        turns = []
        for i, raw in enumerate(rows):
            d = json.loads(raw)
            turns.append(
                Turn(
                    Role(d["role"]),
                    d["text"],
                    d["ts"],
                    Category(d["category"]),
                    Action(d["action"]),
                    d["scores"],
                    offset + i,
                )
            )
        return turns

    def delete(self, session_id: str) -> bool:
        """Erase the session and its turns (both keys); False if unknown.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        info_key, turns_key = self.keys(session_id)

        def erase() -> list[Any]:
            with self._client.pipeline(transaction=True) as p:
                p.delete(info_key)
                p.delete(turns_key)
                return p.execute()

        removed_info, _ = self._call("delete", erase)
        return bool(removed_info)

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()
