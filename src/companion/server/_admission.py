"""Admission in front of the model: a bounded FIFO queue, and threads of their own for turns.

Turns (SendMessage, StreamMessage) hold the model for seconds; everything else (health,
CreateSession, GetHistory, DeleteSession) takes milliseconds. So the two never share threads:
turns run in :class:`GenerationQueue`'s own executor, one per slot (``generation_batch_size``
slots: 1 when the model takes one generation at a time, more when concurrent turns share
batches), and the cheap calls in :func:`io_executor`'s. A turn waits for its
slot on the event loop, holding no thread; when ``depth`` turns already wait, the next gets
RESOURCE_EXHAUSTED at once with a ``retry-after-ms`` hint. A turn whose client has gone or whose
deadline has passed while it waited is dropped before it reaches the model. Every rejection and
drop is counted (``companion_rejected_rpcs_total``) and named in the call's ``rpc`` log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable
from .metrics import Metrics

__all__ = ["IO_THREADS", "GenerationQueue", "io_executor"]

T = TypeVar("T")

IO_THREADS = 4
_MIN_RETRY_MS, _MAX_RETRY_MS = 50, 60_000
_DEADLINE = "the deadline passed while the turn waited for the model; nothing was stored"


def io_executor() -> ThreadPoolExecutor:
    """The threads of the cheap calls (session and history reads and writes)."""
    return ThreadPoolExecutor(IO_THREADS, thread_name_prefix="companion-io")


def _annotate(fields: dict[str, Any] | None, **values: Any) -> None:
    if fields is not None:
        fields.update(values)


class GenerationQueue:
    """A bounded FIFO queue of turns in front of the model, and the threads that run them.

    Args:
        metrics: Where rejections and drops are counted and the queue length is shown.
        depth: How many turns may wait; the next one is rejected (RESOURCE_EXHAUSTED).
        slots: Turns that run at once (``generation_batch_size``; 1: one generation at a time).
    """

    def __init__(self, metrics: Metrics, depth: int, slots: int = 1) -> None:
        if depth < 0 or slots < 1:
            raise ValueError(f"depth={depth}, slots={slots}: need depth >= 0 and slots >= 1")
        self.metrics = metrics
        self.depth = depth
        self.slots = slots
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._executor = ThreadPoolExecutor(slots, thread_name_prefix="companion-turn")
        self._turn_ms = 1000.0  # a running mean of how long a turn holds its slot

    @property
    def waiting(self) -> int:
        """Turns waiting for a slot now."""
        return sum(1 for w in self._waiters if not w.done())

    def retry_after_ms(self) -> int:
        """How long the turns running and waiting now should take, by the recent mean."""
        ahead = self.waiting + self.slots - self._free
        estimate = self._turn_ms * max(ahead, 1) / self.slots
        return int(min(max(math.ceil(estimate), _MIN_RETRY_MS), _MAX_RETRY_MS))

    async def start(
        self,
        method: str,
        context: Any,
        expired: Callable[[], bool],
        fn: Callable[[], T],
        fields: dict[str, Any] | None = None,
    ) -> asyncio.Future[T]:
        """Wait for a slot (FIFO), then run ``fn`` in a turn thread; the slot is given back
        when ``fn`` returns (not when the caller stops waiting for it: a cancelled turn holds
        the model until it notices, within a token).

        Args:
            method: The RPC, for the metrics.
            context: The call's ``grpc.aio.ServicerContext``.
            expired: True once the call's deadline has passed.
            fn: The turn.
            fields: The call's log fields, to name a rejection or drop.

        Raises:
            ResourceExhausted: ``depth`` turns wait already (with ``retry_after_ms``).
            DeadlineExceeded: the deadline passed while the turn waited.
            Cancelled: the client went away as the slot came (grpc has ended the call).
            asyncio.CancelledError: the call was cancelled while it waited.
            Unavailable: the server is shutting down.
        """
        await self._acquire(method, context, expired, fields)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            future = self._executor.submit(fn)
        except RuntimeError:  # shut down
            self._release()
            raise Unavailable("the server is shutting down; retry") from None

        def done(f: Future[T]) -> None:
            elapsed = None if f.cancelled() else (time.perf_counter() - started) * 1000
            with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone
                loop.call_soon_threadsafe(self._finished, elapsed)

        future.add_done_callback(done)
        return asyncio.wrap_future(future, loop=loop)

    async def _acquire(
        self,
        method: str,
        context: Any,
        expired: Callable[[], bool],
        fields: dict[str, Any] | None,
    ) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
        else:
            if self.waiting >= self.depth:
                hint = self.retry_after_ms()
                self._count(method, "queue_full", fields, retry_after_ms=hint)
                raise ResourceExhausted(
                    f"the generation queue is full ({self.depth} turns waiting); retry after"
                    f" about {hint} ms",
                    retry_after_ms=hint,
                )
            await self._wait(method, context, fields)
        # The slot is ours. A call that ended while it waited must not reach the model.
        if expired():
            self._release()
            self._count(method, "deadline_passed", fields)
            raise DeadlineExceeded(_DEADLINE)
        if context.done() or context.cancelled():
            self._release()
            self._count(method, "client_gone", fields)
            raise Cancelled("the client went away while the turn waited for the model")

    async def _wait(self, method: str, context: Any, fields: dict[str, Any] | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.metrics.queue_length.set(self.waiting)
        started = time.perf_counter()
        remaining = context.time_remaining()
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as we were cancelled: pass it on
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                self._count(method, "deadline_passed", fields)
                raise DeadlineExceeded(_DEADLINE) from None
            if isinstance(exc, asyncio.CancelledError):
                # gRPC also cancels a call whose deadline passed: that is not a client gone
                left = context.time_remaining()
                passed = left is not None and left <= 0
                self._count(method, "deadline_passed" if passed else "client_gone", fields)
            raise
        finally:
            self._forget_done()
            _annotate(fields, queued_ms=round((time.perf_counter() - started) * 1000, 2))

    def _finished(self, elapsed_ms: float | None) -> None:
        if elapsed_ms is not None:
            self._turn_ms = 0.8 * self._turn_ms + 0.2 * elapsed_ms
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                self.metrics.queue_length.set(self.waiting)
                return
        self._free += 1

    def _forget_done(self) -> None:
        self._waiters = deque(w for w in self._waiters if not w.done())
        self.metrics.queue_length.set(self.waiting)

    def _count(self, method: str, reason: str, fields: dict[str, Any] | None, **extra: Any) -> None:
        self.metrics.rejected.labels(method, reason).inc()
        _annotate(fields, rejected=reason, **extra)

    def close(self) -> None:
        """Stop the turn threads once the turns running now end."""
        self._executor.shutdown(wait=False, cancel_futures=True)
