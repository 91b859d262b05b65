"""The asyncio client, the twin of :class:`~companion.client.CompanionClient`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio
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

__all__ = ["AsyncCompanionClient"]


class AsyncCompanionClient:
    """The asyncio twin of :class:`~companion.client.CompanionClient`; same methods, awaited.

    Request ids and retries as in the sync client: a fresh id per message, UNAVAILABLE retried
    with the same id up to ``retries`` times (a stream only before its first event).

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
        >>> async with AsyncCompanionClient("127.0.0.1:50051") as cl:
        ...     sid = await cl.create_session()
        ...     async for ev in cl.stream(sid, "hello"):
        ...         print(ev)
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
            aio.secure_channel(target, credentials, options)
            if credentials is not None
            else aio.insecure_channel(target, options)
        )
        self._stub = pb_grpc.CompanionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = metadata_for(api_key)

    async def _call(
        self, method: Any, request: Any, timeout: float | None, retry: bool = False
    ) -> Any:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                error = error_from_rpc(err)
            delay = self.retry.delay(attempt, error) if retry else None
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def create_session(
        self, locale: str = "en-US", metadata: Mapping[str, str] | None = None
    ) -> str:
        """Open a conversation; returns its id."""
        req = pb.CreateSessionRequest(locale=locale, metadata=dict(metadata or {}))
        return str((await self._call(self._stub.CreateSession, req, self.timeout)).session_id)

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """Send a message; returns the guarded reply (``request_id`` as in the sync client)."""
        req = pb.SendMessageRequest(
            session_id=session_id, text=text, request_id=request_id or new_request_id()
        )
        resp = await self._call(self._stub.SendMessage, req, timeout or self.timeout, retry=True)
        return _wire.reply_from_pb(resp)

    async def stream(
        self,
        session_id: str,
        text: str,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[ClientEvent]:
        """Send a message; yields checked ``TextDelta``s, maybe ``Withheld``, then ``TurnDone``.

        Leaving the loop early cancels the call; the server then stores nothing of the turn.
        UNAVAILABLE before the first event is retried with the same request id.
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
                async for message in call:
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
            await asyncio.sleep(delay)
            attempt += 1

    async def history(self, session_id: str, *, page_size: int = 100) -> list[Turn]:
        """All stored turns, oldest first (fetched page by page)."""
        turns: list[Turn] = []
        token = ""
        while True:
            req = pb.GetHistoryRequest(session_id=session_id, page_size=page_size, page_token=token)
            resp = await self._call(self._stub.GetHistory, req, self.timeout, retry=True)
            turns.extend(_wire.turn_from_pb(t) for t in resp.turns)
            token = resp.next_page_token
            if not token:
                return turns

    async def delete_session(self, session_id: str) -> None:
        """Erase a conversation and its turns."""
        req = pb.DeleteSessionRequest(session_id=session_id)
        await self._call(self._stub.DeleteSession, req, self.timeout)

    async def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until the server's health is SERVING.

        Raises:
            Unavailable: not SERVING within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                req = health_pb2.HealthCheckRequest(service="")
                resp = await self._health.Check(req, timeout=5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() >= deadline:
                raise Unavailable(f"server at {self.target} not SERVING after {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncCompanionClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
