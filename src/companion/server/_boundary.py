"""What the server does with bytes and strings it cannot trust, before the servicer sees them.

- Undecodable requests: grpc's aio server calls a method's request deserializer before any
  interceptor code or servicer runs, and reports an exception from it as UNKNOWN with the
  exception's class in the message. :func:`safe_deserializer` wraps a deserializer so that
  bytes it cannot parse (corrupt protobuf, invalid UTF-8 or a lone surrogate in a string field)
  become an :class:`Undecodable` value; the interceptor turns that into INVALID_ARGUMENT.
- Logs: a session id is logged only when it has the shape of an id we issue; any other value
  is logged as :func:`session_id_fields`'s keyed hash, so a client cannot write into our logs.
  A request id (chosen by the client) is only ever logged as that hash
  (:func:`request_id_fields`), valid or not.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ..sessions import is_valid_session_id

__all__ = [
    "UNDECODABLE_MESSAGE",
    "Undecodable",
    "guard_foreign",
    "keyed_hash",
    "request_id_fields",
    "safe_deserializer",
    "session_id_fields",
]

UNDECODABLE_MESSAGE = (
    "the request is not a valid protobuf message for this method"
    " (corrupt bytes, or a string field that is not valid UTF-8)"
)

# Per process, never stored or logged: the hashes of one process can be compared with each
# other (the same bad id twice), not with another process's or with a dictionary of ids.
_LOG_KEY = secrets.token_bytes(32)


class Undecodable:
    """The request of a call whose bytes could not be parsed (its bytes are not kept)."""

    __slots__ = ()

    session_id = ""
    request_id = ""


_UNDECODABLE = Undecodable()


def safe_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns an :class:`Undecodable` where it would raise."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or UnicodeDecodeError from pure-Python protobuf
            return _UNDECODABLE

    return deserialize


def session_id_fields(session_id: str) -> dict[str, str]:
    """Log fields for a client-supplied session id: the id itself when it is well formed,
    otherwise ``session_id_hmac`` (HMAC-SHA256 under a per-process key, 12 hex characters)."""
    if not session_id:
        return {}
    if is_valid_session_id(session_id):
        return {"session_id": session_id}
    return {"session_id_hmac": keyed_hash(session_id)}


def request_id_fields(request_id: str) -> dict[str, str]:
    """Log fields for a client's request id: ``request_id_hmac`` only (the id is the client's
    own string, so never logged raw), enough to tell a retry from a new request."""
    return {"request_id_hmac": keyed_hash(request_id)} if request_id else {}


def keyed_hash(value: str) -> str:
    """HMAC-SHA256 of ``value`` under the per-process key, 12 hex characters."""
    digest = hmac.new(_LOG_KEY, value.encode("utf-8", "replace"), hashlib.sha256)
    return digest.hexdigest()[:12]


def guard_foreign(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of another service (health, reflection) that answers INVALID_ARGUMENT for an
    undecodable request instead of UNKNOWN; otherwise it behaves as ``handler``."""
    behaviors = (
        handler.unary_unary,
        handler.unary_stream,
        handler.stream_unary,
        handler.stream_stream,
    )
    if not any(inspect.iscoroutinefunction(b) or inspect.isasyncgenfunction(b) for b in behaviors):
        return handler  # a synchronous handler runs in grpc's thread pool: left as it is
    deserialize = safe_deserializer(handler.request_deserializer)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _checked_unary(handler.unary_unary), deserialize, serialize
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _checked_unary(handler.unary_stream), deserialize, serialize
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _checked_stream(handler.stream_unary), deserialize, serialize
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _checked_stream(handler.stream_stream), deserialize, serialize
        )
    return handler  # pragma: no cover - every handler has one of the four kinds


async def _reject(context: Any) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE_MESSAGE)


def _checked_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    # grpc aio tells an async-generator handler from a coroutine one by inspecting it, so the
    # wrapper must be of the same kind.
    if inspect.isasyncgenfunction(behavior):

        async def unary_gen(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _reject(context)
            async for response in behavior(request, context):
                yield response

        return unary_gen

    async def unary(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await _reject(context)
        return await behavior(request, context)

    return unary


def _checked_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                await _reject(context)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def stream_gen(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for response in behavior(checked(requests, context), context):
                yield response

        return stream_gen

    async def stream(requests: AsyncIterator[Any], context: Any) -> Any:
        return await behavior(checked(requests, context), context)

    return stream
