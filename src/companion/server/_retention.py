"""Retention: a background task of the server that erases expired sessions.

Every ``purge_interval_seconds``, from the moment the server is SERVING, it calls
:meth:`Companion.purge_expired <companion.Companion.purge_expired>` in a thread: the sessions
older than the companion's ``max_session_age_seconds`` are erased with all their turns, as
thoroughly as DeleteSession. Each run is logged (``sessions_purged``: how many, how long) and
counted (``companion_sessions_purged_total``); a run that fails is logged (``purge_failed``,
the error's type only) and counted as a store fault, and the next run tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .._companion import Companion
from .._logging import get_logger
from .metrics import Metrics

__all__ = ["PurgeTask"]

log = get_logger("companion.server")


class PurgeTask:
    """Runs the retention purge now and then while the server runs.

    Args:
        companion: Whose expired sessions to erase.
        interval: Seconds between the end of one run and the start of the next.
        metrics: Where purged sessions and failed runs are counted.
    """

    def __init__(self, companion: Companion, interval: float, metrics: Metrics) -> None:
        self.companion = companion
        self.interval = interval
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[int] | None = None  # the run in its thread, if any

    def start(self) -> None:
        """Start the runs (the first at once) on the running event loop."""
        self._task = asyncio.create_task(self._loop(), name="companion-purge")

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)

    async def run_once(self) -> int:
        """One purge; returns how many sessions it erased (0 when it failed)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(None, self.companion.purge_expired)
        try:
            purged = await asyncio.shield(self._running)  # stop() waits for it, not cancels
        except Exception as exc:  # logged and counted; the next run tries again
            reason = getattr(exc, "reason", None) or "error"
            self.metrics.faults.labels("store", reason).inc()
            log.error("purge_failed", error=type(exc).__name__, reason=reason)
            return 0
        self.metrics.purged.inc(purged)
        level = log.info if purged else log.debug
        level("sessions_purged", sessions=purged, ms=round((time.perf_counter() - started) * 1000))
        return purged

    async def stop(self, wait: float = 10.0) -> None:
        """Cancel the runs; a run in progress gets ``wait`` seconds to finish in its thread
        (the store is closed after this)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running is not None and not self._running.done():
            await asyncio.wait([self._running], timeout=wait)
