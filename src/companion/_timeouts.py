"""Time limits around the guard and the model, so that a hung backend cannot hang a turn.

A check or a generation runs in a thread of its own while the turn's thread waits for it at most
the configured time; then the turn goes on without it (the guard's check fails closed, the
generation raises). Python cannot stop a thread, so a backend that never returns keeps its
thread. Such a thread is remembered (:class:`Stuck`), and the next call waits for it first,
within its own time limit: a backend stuck for good costs one thread, not one per call, and
every call while it is stuck times out as well.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .protocols import ShouldStop

__all__ = ["Stuck", "call_within", "stream_within"]

T = TypeVar("T")

_POLL_SECONDS = 0.05  # how often a wait for the model looks at should_stop
_DELTA, _END, _ERROR = "delta", "end", "error"


class Stuck:
    """Threads of calls that outlived their time limit and have not ended yet."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def add(self, thread: threading.Thread) -> None:
        """Remember ``thread`` until it ends."""
        with self._lock:
            self._threads.append(thread)

    def wait(self, deadline: float) -> bool:
        """Wait until every remembered thread has ended, at most until ``deadline``
        (``time.monotonic()``); False when one is still running then."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
        return True

    @property
    def count(self) -> int:
        """Remembered threads still running."""
        with self._lock:
            return sum(1 for t in self._threads if t.is_alive())


def call_within(
    fn: Callable[[], T],
    timeout: float | None,
    stuck: Stuck,
    timed_out: Callable[[], Exception],
    name: str = "companion-call",
) -> T:
    """``fn()``, or ``timed_out()`` raised when it has not returned within ``timeout`` seconds
    (``None``: ``fn`` runs in the caller's thread, without a limit). Exceptions of ``fn`` are
    raised in the caller's thread."""
    if timeout is None:
        return fn()
    deadline = time.monotonic() + timeout
    if not stuck.wait(deadline):
        raise timed_out()
    result: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()  # the caller's log context, in the worker too

    def work() -> None:
        try:
            result["value"] = context.run(fn)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        stuck.add(thread)
        raise timed_out()
    if "error" in result:
        raise result["error"]
    value: T = result["value"]
    return value


def stream_within(
    open_stream: Callable[[ShouldStop], Iterator[str]],
    timeout: float | None,
    stuck: Stuck,
    should_stop: ShouldStop | None,
    timed_out: Callable[[], Exception],
) -> Iterator[str]:
    """The deltas of ``open_stream(stop)``, read in a thread of their own, until the stream
    ends, ``should_stop()`` turns true (the iteration then ends, as a generator's does) or
    ``timeout`` seconds have passed since the call (then ``timed_out()`` is raised). The
    ``stop`` passed to ``open_stream`` turns true with ``should_stop`` and once the caller has
    stopped reading, so a generator that polls it ends at once. ``None``: the stream is read in
    the caller's thread, without a limit."""
    if timeout is None:
        yield from open_stream(should_stop or (lambda: False))
        return
    deadline = time.monotonic() + timeout
    if not stuck.wait(deadline):
        raise timed_out()
    halt = threading.Event()
    wanted = threading.Semaphore(0)  # one delta is produced per delta asked for: lazy as before
    items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def stop() -> bool:
        return halt.is_set() or (should_stop is not None and should_stop())

    def pump() -> None:
        stream: Iterator[str] | None = None
        try:
            stream = open_stream(stop)
            while True:
                wanted.acquire()
                if halt.is_set():
                    break
                try:
                    delta = next(stream)
                except StopIteration:
                    items.put((_END, None))
                    break
                items.put((_DELTA, delta))
        except BaseException as exc:  # re-raised in the reader's thread
            items.put((_ERROR, exc))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # a generator that was left early frees the model

    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(pump,), name="companion-generation", daemon=True
    )
    thread.start()
    try:
        while True:
            wanted.release()
            while True:
                if should_stop is not None and should_stop():
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out()
                try:
                    kind, value = items.get(timeout=min(remaining, _POLL_SECONDS))
                    break
                except queue.Empty:
                    continue
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        halt.set()
        wanted.release()  # wake the pump, so that it closes the stream
        if thread.is_alive():  # still generating, or stuck: the next call waits for it
            stuck.add(thread)
