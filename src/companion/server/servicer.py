"""The thin gRPC adapter: proto -> domain, the library in a worker thread, domain -> proto.

Errors are raised as library exceptions and mapped to status codes by the interceptor. Each
turn runs with a ``should_stop`` that turns true when the call is cancelled or its deadline
passes, so an abandoned turn stops generating and stores nothing.

Threads: turns wait in the :class:`~._admission.GenerationQueue` and run in its threads; the
cheap calls, and a turn's checks before it queues (session, text, request id, a stored reply
to replay), run in an executor of their own, so they never wait behind generation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias, TypeVar

from .. import _wire
from .._companion import Companion, Session
from .._proto.companion.v1 import companion_pb2 as pb
from .._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from ..errors import Cancelled, DeadlineExceeded, GuardTimeout, InvalidArgument, Unavailable
from ..pipeline import StreamEvent, TextDelta, TurnDone, Withheld, replay_events
from ..types import Reply
from ._admission import GenerationQueue, io_executor
from .interceptors import call_fields, caller_owner, note_fault
from .metrics import Metrics

__all__ = ["CompanionServicer"]

T = TypeVar("T")
Context: TypeAlias = Any  # grpc.aio.ServicerContext; grpc ships no type information
TurnRequest: TypeAlias = pb.SendMessageRequest | pb.StreamMessageRequest

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class CompanionServicer(pb_grpc.CompanionServiceServicer):
    """``companion.v1.CompanionService`` over a :class:`~companion.Companion`.

    Args:
        companion: The library facade; ``None`` until the models are loaded (calls then get
            UNAVAILABLE). The server sets :attr:`companion` when loading finishes.
        queue: The generation queue turns wait in; by default one of depth 8 with its own
            metrics.
    """

    def __init__(
        self, companion: Companion | None = None, queue: GenerationQueue | None = None
    ) -> None:
        self.companion = companion
        self.queue = queue or GenerationQueue(Metrics(), depth=8)
        self._io: ThreadPoolExecutor = io_executor()

    def _c(self) -> Companion:
        if self.companion is None:
            raise Unavailable("the models are still loading; retry shortly")
        return self.companion

    async def _cheap(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn)

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        c, owner = self._c(), caller_owner() or ""
        locale = request.locale or "en-US"
        s = await self._cheap(lambda: c.start_session(locale, dict(request.metadata), owner))
        return pb.CreateSessionResponse(session_id=s.id, locale=s.locale)

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        session, rid, replay = await self._prepare(request)
        if replay is not None:
            return _wire.reply_to_pb(replay)
        stop, text = _Stop(context), request.text
        turn = await self.queue.start(
            "SendMessage",
            context,
            lambda: stop.expired,
            lambda: session.send(text, stop, request_id=rid),
            call_fields(),
        )
        reply = await _finish(stop, turn)
        _note_guard_faults(reply)
        return _wire.reply_to_pb(reply)

    async def StreamMessage(
        self, request: pb.StreamMessageRequest, context: Context
    ) -> AsyncIterator[pb.StreamMessageResponse]:
        session, rid, replay = await self._prepare(request)
        if replay is not None:
            events: AsyncIterator[StreamEvent] = _aiter(replay_events(replay))
        else:
            stop, text = _Stop(context), request.text
            events = self._stream(context, stop, lambda: session.stream(text, stop, request_id=rid))
        async for event in events:
            for message in _event_to_pb(event):
                yield message

    async def _prepare(self, request: TurnRequest) -> tuple[Session, str | None, Reply | None]:
        """Everything a turn checks before it queues: the session (and its owner), the text
        and the request id; and the reply stored under that id, if any (then it never
        queues: a retry of a stored turn is answered at once)."""
        c, owner = self._c(), caller_owner()
        sid, text, rid = request.session_id, request.text, request.request_id or None

        def prepare() -> tuple[Session, Reply | None]:
            session = c.session(sid, owner)
            return session, session.stored_reply(text, rid)

        session, replay = await self._cheap(prepare)
        if replay is not None:
            fields = call_fields()
            if fields is not None:
                fields["replayed"] = True
        return session, rid, replay

    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: Context
    ) -> pb.GetHistoryResponse:
        c, owner = self._c(), caller_owner()
        offset, size = _page(request.page_token, request.page_size)
        turns = await self._cheap(
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
        await self._cheap(lambda: c.delete_session(c.session(sid, owner).id))
        return pb.DeleteSessionResponse()

    async def _stream(
        self, context: Context, stop: _Stop, make: Callable[[], Iterator[StreamEvent]]
    ) -> AsyncIterator[StreamEvent]:
        """Iterate a blocking event stream in a turn thread, handing events to the event loop."""
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

        try:
            worker = await self.queue.start(
                "StreamMessage", context, lambda: stop.expired, work, call_fields()
            )
        except BaseException:
            stop.set()
            raise
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Cancelled):
                    raise _translate(stop, item) from None
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TurnDone):
                    _note_guard_faults(item.reply)
                yield item
        finally:
            stop.set()
            if not worker.done():
                worker.add_done_callback(lambda f: f.cancelled() or f.exception())

    def close(self) -> None:
        """Stop the threads once the calls running now end."""
        self.queue.close()
        self._io.shutdown(wait=False, cancel_futures=True)


def _note_guard_faults(reply: Reply) -> None:
    """Name the checks of a new turn that failed (closed) in the call's ``rpc`` line."""
    fields = call_fields()
    for component, verdict in (
        ("input_guard", reply.input_verdict),
        ("output_guard", reply.output_verdict),
    ):
        if verdict is not None and verdict.error is not None:
            reason = "timeout" if verdict.error == GuardTimeout.__name__ else "error"
            note_fault(fields, component, reason)


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


async def _finish(stop: _Stop, turn: asyncio.Future[T]) -> T:
    """Wait for a turn running in its thread; a cancelled call tells it to stop."""
    try:
        return await turn
    except Cancelled as exc:
        raise _translate(stop, exc) from None
    finally:
        stop.set()  # the turn is over either way; if we were cancelled, generation stops


async def _aiter(events: Iterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event
