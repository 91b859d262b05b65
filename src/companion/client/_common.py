"""What the sync and async clients share: events, error mapping, message conversion, retries."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Mapping

import grpc

from .. import _wire
from .._proto.companion.v1 import companion_pb2 as pb
from ..errors import (
    Cancelled,
    CompanionError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from ..pipeline import TextDelta, TurnDone, Withheld

__all__ = [
    "ClientEvent",
    "Pem",
    "Retry",
    "channel_credentials",
    "error_from_rpc",
    "event_from_pb",
    "metadata_for",
    "new_request_id",
]

DEFAULT_TIMEOUT = 120.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5
_MAX_BACKOFF = 8.0
_RETRY_AFTER_KEY = "retry-after-ms"


ClientEvent = TextDelta | Withheld | TurnDone
"""What :meth:`CompanionClient.stream` yields: checked deltas, maybe ``Withheld``, then
``TurnDone``."""

_ERRORS: Mapping[grpc.StatusCode, type[CompanionError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: SessionNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def error_from_rpc(err: grpc.RpcError) -> CompanionError:
    """The library error for a failed call; the message starts with the status code name. A
    RESOURCE_EXHAUSTED carries the server's ``retry-after-ms`` hint as ``retry_after_ms``."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else ""
    cls = _ERRORS.get(code, CompanionError)
    if cls is ResourceExhausted:
        return ResourceExhausted(f"{code.name}: {details}", retry_after_ms=_retry_after(err))
    return cls(f"{code.name}: {details}")


def _retry_after(err: grpc.RpcError) -> int | None:
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == _RETRY_AFTER_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return int(text) if text.isascii() and text.isdigit() else None
    return None


def new_request_id() -> str:
    """A fresh request id for one message (a random UUID), reused by its retries."""
    return str(uuid.uuid4())


class Retry:
    """When a call that got UNAVAILABLE is sent again: up to ``retries`` times, after
    ``backoff`` seconds doubling each time (at most 8 s), each delay scaled by a random factor
    in [0.5, 1] so that many clients do not come back at once.

    Only calls that are safe to repeat are retried: a turn with its request id (the server
    answers a retry of a stored turn with the stored reply) and history reads.
    """

    def __init__(self, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries={retries}, backoff={backoff}: both must be >= 0")
        self.retries = retries
        self.backoff = backoff

    def delay(self, attempt: int, error: CompanionError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after ``error``; ``None``: give up."""
        if not isinstance(error, Unavailable) or attempt >= self.retries:
            return None
        return min(self.backoff * float(2**attempt), _MAX_BACKOFF) * random.uniform(0.5, 1.0)


Pem = str | os.PathLike[str] | bytes
"""A PEM file's path, or its contents as bytes."""


def channel_credentials(
    credentials: grpc.ChannelCredentials | None = None,
    *,
    tls: bool = False,
    root_ca: Pem | None = None,
    client_cert: Pem | None = None,
    client_key: Pem | None = None,
) -> grpc.ChannelCredentials | None:
    """The channel's TLS credentials, or ``None`` for plaintext.

    Args:
        credentials: Ready-made credentials; then none of the other options may be given.
        tls: TLS with the system's root certificates (implied by any option below).
        root_ca: The CA certificate(s) that signed the server's certificate (PEM).
        client_cert: This client's certificate chain, for a server that requires mutual TLS.
        client_key: Its private key (PEM); given with ``client_cert``, never alone.

    Raises:
        ValueError: ``credentials`` with another option, or a certificate without its key.
        OSError: a PEM file cannot be read.
    """
    given = tls or any(v is not None for v in (root_ca, client_cert, client_key))
    if credentials is not None:
        if given:
            raise ValueError("give credentials= or the TLS options (tls, root_ca...), not both")
        return credentials
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together: give both or neither")
    if not given:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(root_ca),
        private_key=_pem(client_key),
        certificate_chain=_pem(client_cert),
    )


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


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
