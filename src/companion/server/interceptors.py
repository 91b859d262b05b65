"""The one server interceptor: authentication, error mapping, canonical log line, metrics.

It wraps every ``companion.v1.CompanionService`` method (health and reflection get only the
undecodable-request check below):

- API keys (optional), per-key rate limits and the brake on failed authentications
  (:mod:`._access`): the caller's owner id (a hash of the key, never the key) is put in a
  context variable for the servicer (:func:`caller_owner`).
- Errors: each :class:`~companion.errors.CompanionError` becomes one status code
  (:data:`STATUS_CODES`); anything else is INTERNAL with a generic message, never UNKNOWN.
- Undecodable requests (corrupt protobuf, invalid UTF-8) get INVALID_ARGUMENT, on every
  service (:mod:`._boundary`): grpc would answer UNKNOWN naming protobuf's exception.
- Concurrency: at most ``max_concurrent_rpcs`` calls of the service at once; the next gets
  RESOURCE_EXHAUSTED with a ``retry-after-ms`` hint, and is logged and counted. This replaces
  grpc's own ``maximum_concurrent_rpcs``, which refuses health checks and reflection too (so a
  liveness probe would kill a busy server) and neither logs nor counts what it refuses.
- One ``rpc`` structlog line per call with method, code, latency, session id and verdict; and
  the Prometheus metrics. A fault of a part (a guard that failed closed, a model or store
  that failed) is named in the line (``faults``) and counted (``companion_faults_total``).
  Message and reply text are never read here, and no other string the client sent is logged:
  a session id only when well formed, otherwise as a keyed hash; a request id only as a keyed
  hash. A ``ResourceExhausted`` that carries ``retry_after_ms``
  goes out as ``retry-after-ms`` trailing metadata.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio

from .._logging import get_logger
from .._proto.companion.v1 import companion_pb2 as pb
from ..errors import (
    Cancelled,
    CompanionError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    PermissionDenied,
    ResourceExhausted,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from ._access import AccessControl, owner_of_key
from ._boundary import (
    UNDECODABLE_MESSAGE,
    Undecodable,
    guard_foreign,
    request_id_fields,
    safe_deserializer,
)
from ._boundary import session_id_fields as session_id_fields
from .metrics import Metrics

__all__ = [
    "RETRY_AFTER_KEY",
    "STATUS_CODES",
    "ServiceInterceptor",
    "call_fields",
    "caller_owner",
    "note_fault",
    "owner_of_key",
    "session_id_fields",
]

log = get_logger("companion.server")

SERVICE_PREFIX = "/companion.v1.CompanionService/"
RETRY_AFTER_KEY = "retry-after-ms"
"""Trailing metadata of a RESOURCE_EXHAUSTED that says when to retry, in milliseconds."""
_CONCURRENCY_RETRY_MS = 250

STATUS_CODES: dict[type[CompanionError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    SessionNotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ModelLoadError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
}
"""Library error class -> status code (the first matching base class wins)."""

_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("companion_owner", default=None)


_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "companion_call_fields", default=None
)


def caller_owner() -> str | None:
    """The authenticated caller's owner id, or ``None`` when authentication is off."""
    return _owner.get()


def call_fields() -> dict[str, Any] | None:
    """The fields of the current call's ``rpc`` log line, for the servicer to add to (never
    text); ``None`` outside a call."""
    return _fields.get()


def note_fault(fields: dict[str, Any] | None, component: str, reason: str) -> None:
    """Name a fault in the call's ``rpc`` line (``faults``: ``"component:reason"``); the
    interceptor counts it in ``companion_faults_total`` when the call ends."""
    if fields is not None:
        fields.setdefault("faults", []).append(f"{component}:{reason}")


def status_for(exc: CompanionError) -> grpc.StatusCode:
    """The status code of a library error."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


class _Call:
    """What the canonical log line and the metrics record about one RPC."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.fields: dict[str, Any] = {}

    def saw_request(self, request: Any) -> None:
        self.fields.update(session_id_fields(getattr(request, "session_id", "")))
        self.fields.update(request_id_fields(getattr(request, "request_id", "")))

    def saw_response(self, response: Any, metrics: Metrics) -> None:
        name = type(response).__name__
        if name == "CreateSessionResponse":
            self.fields["session_id"] = response.session_id
        elif name == "StreamMessageResponse" and response.WhichOneof("event") == "done":
            self.fields["withheld"] = response.done.withheld
            self.saw_response(response.done.reply, metrics)
        elif name == "SendMessageResponse":
            category = _enum_name(pb.Category, response.category)
            action = _enum_name(pb.Action, response.action)
            self.fields.update(category=category, action=action, turn_index=response.turn_index)
            if response.HasField("verdict"):
                self.fields["decided_by"] = _enum_name(pb.Direction, response.verdict.direction)
                self.fields["policy_version"] = response.verdict.policy_version
            metrics.turns.labels(action, category).inc()
            for field in ("input_verdict", "output_verdict"):
                if response.HasField(field):
                    v = getattr(response, field)
                    metrics.guard_decisions.labels(
                        _enum_name(pb.Category, v.category),
                        _enum_name(pb.Decision, v.decision),
                        _enum_name(pb.Direction, v.direction),
                    ).inc()
        elif name == "GetHistoryResponse":
            self.fields["turns"] = len(response.turns)

    def finish(self, metrics: Metrics) -> None:
        elapsed = time.perf_counter() - self.started
        code = self.code.name
        metrics.rpc_latency.labels(self.method, code).observe(elapsed)
        for fault in self.fields.get("faults", ()):
            component, _, reason = fault.partition(":")
            metrics.faults.labels(component, reason).inc()
        if self.code is not grpc.StatusCode.OK:
            metrics.rpc_errors.labels(self.method, code).inc()
        level = log.info if self.code is not grpc.StatusCode.INTERNAL else log.error
        level(
            "rpc",
            method=self.method,
            code=code,
            latency_ms=round(elapsed * 1000, 2),
            **self.fields,
        )


def _enum_name(enum: Any, value: int) -> str:
    # CATEGORY_CRISIS -> "crisis": readable in logs and metric labels.
    try:
        return str(enum.Name(value)).split("_", 1)[1].lower()
    except ValueError:
        return str(value)


class ServiceInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Authenticates, maps errors to status codes, logs and measures every service call.

    Args:
        metrics: Where RPC latencies, errors, turns and guard decisions are counted.
        api_keys: Accepted bearer keys; empty disables authentication.
        max_concurrent_rpcs: Calls of the service handled at once; more get
            RESOURCE_EXHAUSTED (``None``: no limit). Health and reflection do not count.
        access: Keys with rate limits and the failed-authentication brake; by default
            ``api_keys`` without limits.
    """

    def __init__(
        self,
        metrics: Metrics,
        api_keys: Sequence[str] = (),
        max_concurrent_rpcs: int | None = None,
        *,
        access: AccessControl | None = None,
    ) -> None:
        self.metrics = metrics
        self._access = access or AccessControl(metrics, api_keys)
        self._limit = max_concurrent_rpcs
        self._active = 0  # calls of the service being handled (all on the event loop)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method_path: str = handler_call_details.method
        if handler is None:
            return handler
        if not method_path.startswith(SERVICE_PREFIX):
            return guard_foreign(handler)  # health, reflection: only bad bytes are handled
        method = method_path.removeprefix(SERVICE_PREFIX)
        metadata = handler_call_details.invocation_metadata
        deserialize = safe_deserializer(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, metadata, handler.unary_unary),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, metadata, handler.unary_stream),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return handler  # pragma: no cover - the service has no client-streaming methods

    def _authenticate(self, call: _Call, metadata: Any, context: Any) -> str | None:
        """The caller's owner id; raises Unauthenticated or ResourceExhausted (see
        :meth:`AccessControl.admit`)."""
        return self._access.admit(metadata, context.peer(), call.method, call.fields)

    def _wrap_unary(
        self, method: str, metadata: Any, behavior: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(method)
            call.saw_request(request)
            admitted = False
            try:
                admitted = self._admit(call)
                _owner.set(self._authenticate(call, metadata, context))
                _check_decoded(request)
                response = await behavior(request, context)
                call.saw_response(response, self.metrics)
                return response
            except BaseException as exc:
                await self._fail(call, context, exc)
                raise  # pragma: no cover - _fail aborts or re-raises
            finally:
                self._leave(admitted)
                call.finish(self.metrics)

        return unary

    def _wrap_stream(
        self, method: str, metadata: Any, behavior: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = _Call(method)
            call.saw_request(request)
            admitted = False
            try:
                admitted = self._admit(call)
                _owner.set(self._authenticate(call, metadata, context))
                _check_decoded(request)
                async for response in behavior(request, context):
                    call.saw_response(response, self.metrics)
                    yield response
            except BaseException as exc:
                await self._fail(call, context, exc)
                raise  # pragma: no cover
            finally:
                self._leave(admitted)
                call.finish(self.metrics)

        return stream

    def _admit(self, call: _Call) -> bool:
        """Count the call in, or raise ResourceExhausted past ``max_concurrent_rpcs``."""
        _fields.set(call.fields)
        if self._limit is not None and self._active >= self._limit:
            self.metrics.rejected.labels(call.method, "concurrency_limit").inc()
            call.fields["rejected"] = "concurrency_limit"
            raise ResourceExhausted(
                f"more than {self._limit} concurrent calls; retry shortly",
                retry_after_ms=_CONCURRENCY_RETRY_MS,
            )
        self._active += 1
        self.metrics.in_flight.inc()
        return True

    def _leave(self, admitted: bool) -> None:
        if admitted:
            self._active -= 1
            self.metrics.in_flight.dec()

    async def _fail(
        self, call: _Call, context: aio.ServicerContext[Any, Any], exc: BaseException
    ) -> None:
        """Record the status of a failed call and abort it with the mapped code."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # The client went away or its deadline passed; grpc already sent the status.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            call.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, aio.AbortError):  # the servicer aborted itself
            call.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, CompanionError):
            call.code = status_for(exc)
            call.fields["error"] = type(exc).__name__
            component = getattr(exc, "component", None)
            if component is not None:  # a fault of a part (generator, store), counted
                note_fault(call.fields, component, getattr(exc, "reason", None) or "error")
            retry_after = getattr(exc, "retry_after_ms", None)
            trailing = ((RETRY_AFTER_KEY, str(retry_after)),) if retry_after is not None else ()
            await context.abort(call.code, str(exc), trailing)
        # A bug, not a bad request: say so without details (they could hold text).
        call.code = grpc.StatusCode.INTERNAL
        call.fields["error"] = type(exc).__name__
        await context.abort(call.code, "internal error")


def _check_decoded(request: Any) -> None:
    # After authentication: an unauthenticated caller learns nothing about its bytes.
    if isinstance(request, Undecodable):
        raise InvalidArgument(UNDECODABLE_MESSAGE)
