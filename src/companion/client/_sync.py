"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .. import _wire
from .._proto.companion.v1 import companion_pb2 as pb
from .._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from ..errors import Unavailable
from ..types import Reply, Turn
from ._common import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ClientEvent,
    Pem,
    Retry,
    channel_credentials,
    error_from_rpc,
    event_from_pb,
    metadata_for,
    new_request_id,
)

__all__ = ["CompanionClient"]


class CompanionClient:
    """Talks to a companion server; hides the gRPC stubs and returns the library's types.

    Failed calls raise the library's errors (``InvalidArgument``, ``SessionNotFound``,
    ``Unavailable``...) with the status code name at the start of the message.

    Retries: every message is sent with a fresh request id (a UUID), and a turn that fails
    with UNAVAILABLE (server restarting, connection lost) is sent again with the same id, up to
    ``retries`` times with backoff; the server answers a retry of a turn it already stored with
    the stored reply, so nothing is stored twice. A stream is retried only until it has
    yielded its first event. Other errors are never retried.

    Args:
        target: ``host:port`` of the server.
        api_key: Sent as ``authorization: Bearer <key>`` when the server requires keys.
        timeout: Default deadline per call in seconds (``None``: none); each attempt gets it.
        credentials: Ready-made TLS channel credentials (or use the options below); plaintext
            when neither is given.
        tls: TLS with the system's root certificates (implied by ``root_ca``/``client_cert``).
        root_ca: The CA certificate that signed the server's certificate: a PEM file's path
            or its bytes.
        client_cert: This client's certificate (path or bytes), for a server that requires
            mutual TLS; with ``client_key``.
        client_key: Its private key (path or bytes).
        options: Extra gRPC channel options.
        retries: How many times a call that got UNAVAILABLE is sent again (0: never).
        backoff: Seconds before the first retry; doubled for each next one (at most 8 s).

    Example:
        >>> with CompanionClient("127.0.0.1:50051") as cl:
        ...     sid = cl.create_session(locale="en-US")
        ...     r = cl.send(sid, "hello")
        ...     print(r.text, r.category, r.action, r.resources)
    """

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool = False,
        root_ca: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        options: Sequence[tuple[str, Any]] = (),
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = Retry(retries, backoff)
        credentials = channel_credentials(
            credentials, tls=tls, root_ca=root_ca, client_cert=client_cert, client_key=client_key
        )
        self._channel = (
            grpc.secure_channel(target, credentials, options)
            if credentials is not None
            else grpc.insecure_channel(target, options)
        )
        self._stub = pb_grpc.CompanionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = metadata_for(api_key)

    def _call(self, method: Any, request: Any, timeout: float | None, retry: bool = False) -> Any:
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                error = error_from_rpc(err)
            delay = self.retry.delay(attempt, error) if retry else None
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1

    def create_session(
        self, locale: str = "en-US", metadata: Mapping[str, str] | None = None
    ) -> str:
        """Open a conversation; returns its id."""
        req = pb.CreateSessionRequest(locale=locale, metadata=dict(metadata or {}))
        return str(self._call(self._stub.CreateSession, req, self.timeout).session_id)

    def send(
        self,
        session_id: str,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """Send a message; returns the guarded reply (``text``, ``category``, ``action``...).

        Args:
            session_id: From :meth:`create_session`.
            text: The person's message.
            timeout: This call's deadline per attempt (default: the client's).
            request_id: The message's idempotency key; a fresh UUID by default. Pass your own
                to retry a message yourself, even from another process: the same id and text
                get the stored reply, never a second turn.
        """
        req = pb.SendMessageRequest(
            session_id=session_id, text=text, request_id=request_id or new_request_id()
        )
        resp = self._call(self._stub.SendMessage, req, timeout or self.timeout, retry=True)
        return _wire.reply_from_pb(resp)

    def stream(
        self,
        session_id: str,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Iterator[ClientEvent]:
        """Send a message; yields checked ``TextDelta``s, maybe ``Withheld``, then ``TurnDone``.

        Leaving the loop early (``break``, an exception) cancels the call, and the server then
        stores nothing of the turn. UNAVAILABLE before the first event is retried with the
        same request id (see :meth:`send`); after it, the error is raised: the turn may be
        stored, and ``send(..., request_id=...)`` with your own id gets its reply.
        """
        req = pb.StreamMessageRequest(
            session_id=session_id, text=text, request_id=request_id or new_request_id()
        )
        attempt = 0
        while True:
            call = self._stub.StreamMessage(
                req, timeout=timeout or self.timeout, metadata=self._metadata
            )
            started = False
            try:
                for message in call:
                    event = event_from_pb(message)
                    if event is not None:
                        started = True
                        yield event
                return
            except grpc.RpcError as err:
                error = error_from_rpc(err)
                delay = None if started else self.retry.delay(attempt, error)
                if delay is None:
                    raise error from None
            finally:
                call.cancel()
            time.sleep(delay)
            attempt += 1

    def history(self, session_id: str, *, page_size: int = 100) -> list[Turn]:
        """All stored turns, oldest first (fetched page by page)."""
        turns: list[Turn] = []
        token = ""
        while True:
            req = pb.GetHistoryRequest(session_id=session_id, page_size=page_size, page_token=token)
            resp = self._call(self._stub.GetHistory, req, self.timeout, retry=True)
            turns.extend(_wire.turn_from_pb(t) for t in resp.turns)
            token = resp.next_page_token
            if not token:
                return turns

    def delete_session(self, session_id: str) -> None:
        """Erase a conversation and its turns."""
        self._call(
            self._stub.DeleteSession, pb.DeleteSessionRequest(session_id=session_id), self.timeout
        )

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server's health is SERVING.

        Raises:
            Unavailable: not SERVING within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() >= deadline:
                raise Unavailable(f"server at {self.target} not SERVING after {timeout:.0f} s")
            time.sleep(0.2)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> CompanionClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
