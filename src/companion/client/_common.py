"""What the sync and async clients share: events, error mapping, message conversion."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from .. import _wire
from .._proto.companion.v1 import companion_pb2 as pb
from ..errors import (
    Cancelled,
    CompanionError,
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    SessionNotFound,
    Unavailable,
)
from ..pipeline import TextDelta, TurnDone, Withheld

__all__ = ["ClientEvent", "error_from_rpc", "event_from_pb", "metadata_for"]

DEFAULT_TIMEOUT = 120.0


ClientEvent = TextDelta | Withheld | TurnDone
"""What :meth:`CompanionClient.stream` yields: checked deltas, maybe ``Withheld``, then
``TurnDone``."""

_ERRORS: Mapping[grpc.StatusCode, type[CompanionError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: SessionNotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def error_from_rpc(err: grpc.RpcError) -> CompanionError:
    """The library error for a failed call; the message starts with the status code name."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else ""
    cls = _ERRORS.get(code, CompanionError)
    return cls(f"{code.name}: {details}")


def metadata_for(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries ``api_key``."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def event_from_pb(m: pb.StreamMessageResponse) -> ClientEvent | None:
    """A stream event; ``None`` for kinds this client does not know (skip them)."""
    kind = m.WhichOneof("event")
    if kind == "delta":
        return TextDelta(m.delta.text)
    if kind == "withheld":
        return Withheld(_wire.category_from_pb(m.withheld.category))
    if kind == "done":
        return TurnDone(_wire.reply_from_pb(m.done.reply), withheld=m.done.withheld)
    return None
