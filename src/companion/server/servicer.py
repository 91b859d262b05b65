"""The thin gRPC adapter: proto -> domain, the library in a worker thread, domain -> proto.

Errors are raised as library exceptions and mapped to status codes by the interceptor. Each
turn runs with a ``should_stop`` that turns true when the call is cancelled or its deadline
passes, so an abandoned turn stops generating and stores nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias, TypeVar

from .. import _wire
from .._companion import Companion
from .._proto.companion.v1 import companion_pb2 as pb
from .._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from ..errors import Cancelled, DeadlineExceeded, InvalidArgument, Unavailable
from ..pipeline import StreamEvent, TextDelta, TurnDone, Withheld
from .interceptors import caller_owner

__all__ = ["CompanionServicer"]

T = TypeVar("T")
Context: TypeAlias = Any  # grpc.aio.ServicerContext; grpc ships no type information

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class CompanionServicer(pb_grpc.CompanionServiceServicer):
    """``companion.v1.CompanionService`` over a :class:`~companion.Companion`.

    Args:
        companion: The library facade; ``None`` until the models are loaded (calls then get
            UNAVAILABLE). The server sets :attr:`companion` when loading finishes.
    """

    def __init__(self, companion: Companion | None = None) -> None:
        self.companion = companion

    def _c(self) -> Companion:
        if self.companion is None:
            raise Unavailable("the models are still loading; retry shortly")
        return self.companion

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        c, owner = self._c(), caller_owner() or ""
        locale = request.locale or "en-US"
        s = await asyncio.to_thread(c.start_session, locale, dict(request.metadata), owner)
        return pb.CreateSessionResponse(session_id=s.id, locale=s.locale)

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        c, owner, stop = self._c(), caller_owner(), _Stop(context)
        sid, text = request.session_id, request.text
        reply = await _in_thread(stop, lambda: c.session(sid, owner).send(text, stop))
        return _wire.reply_to_pb(reply)

    async def StreamMessage(
        self, request: pb.StreamMessageRequest, context: Context
    ) -> AsyncIterator[pb.StreamMessageResponse]:
        c, owner, stop = self._c(), caller_owner(), _Stop(context)
        sid, text = request.session_id, request.text
        async for event in _stream_in_thread(
            stop, lambda: c.session(sid, owner).stream(text, stop)
        ):
            for message in _event_to_pb(event):
                yield message

    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: Context
    ) -> pb.GetHistoryResponse:
        c, owner = self._c(), caller_owner()
        offset, size = _page(request.page_token, request.page_size)
        turns = await asyncio.to_thread(
            lambda: c.session(request.session_id, owner).history(offset, size + 1)
        )
        token = str(offset + size) if len(turns) > size else ""
        return pb.GetHistoryResponse(
            turns=[_wire.turn_to_pb(t) for t in turns[:size]], next_page_token=token
        )

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Context
    ) -> pb.DeleteSessionResponse:
        c, owner, sid = self._c(), caller_owner(), request.session_id
        await asyncio.to_thread(lambda: c.delete_session(c.session(sid, owner).id))
        return pb.DeleteSessionResponse()


def _page(token: str, size: int) -> tuple[int, int]:
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be 0..{MAX_PAGE_SIZE}")
    # str.isdigit alone accepts "²" (int() then fails) and 650 other non-ASCII digits ("٣").
    if token and not (token.isascii() and token.isdigit() and len(token) <= 9):
        raise InvalidArgument("page_token is not one this service issued")
    return int(token or 0), size or DEFAULT_PAGE_SIZE


def _event_to_pb(event: StreamEvent) -> Iterator[pb.StreamMessageResponse]:
    if isinstance(event, TextDelta):
        yield pb.StreamMessageResponse(delta=pb.TextDelta(text=event.text))
    elif isinstance(event, Withheld):
        category = _wire.category_to_pb(event.category)
        yield pb.StreamMessageResponse(withheld=pb.ReplyWithheld(category=category))
    elif isinstance(event, TurnDone):
        done = pb.TurnDone(reply=_wire.reply_to_pb(event.reply), withheld=event.withheld)
        yield pb.StreamMessageResponse(done=done)


class _Stop:
    """``should_stop`` for one call: true once the call is done (cancelled) or past its deadline."""

    def __init__(self, context: Context) -> None:
        self._event = threading.Event()
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining
        context.add_done_callback(lambda _ctx: self._event.set())

    @property
    def expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set() or self.expired


def _translate(stop: _Stop, exc: Cancelled) -> Exception:
    if stop.expired:
        return DeadlineExceeded("the deadline passed before the turn finished; nothing was stored")
    return exc


async def _in_thread(stop: _Stop, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker thread; a cancelled call tells it to stop."""
    try:
        return await asyncio.to_thread(fn)
    except Cancelled as exc:
        raise _translate(stop, exc) from None
    finally:
        stop.set()  # the turn is over either way; if we were cancelled, generation stops


async def _stream_in_thread(
    stop: _Stop, make: Callable[[], Iterator[StreamEvent]]
) -> AsyncIterator[StreamEvent]:
    """Iterate a blocking event stream in a worker thread, handing events to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()

    def put(item: StreamEvent | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work() -> None:
        try:
            for event in make():
                put(event)
        except BaseException as exc:  # handed to the event loop and re-raised there
            put(exc)
        else:
            put(None)

    worker = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Cancelled):
                raise _translate(stop, item) from None
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if not worker.done():
            worker.add_done_callback(lambda f: f.cancelled() or f.exception())
