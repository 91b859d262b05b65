"""Release units for check-before-release streaming.

Generated text is held back until a unit is complete: a sentence (up to and including its
closing punctuation, or a line break), a clause (at ``,;:``) once the held text is at least
``min_clause_chars`` long, or ``max_chars`` characters when no boundary comes (cut at the last
space when there is one). The pipeline runs the output guard on the reply so far plus the unit
and only then releases the unit to the client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from ._events import TextDelta
from .errors import Cancelled
from .protocols import ShouldStop
from .types import Verdict

__all__ = ["Checked", "ReleaseBuffer", "release_checked"]

_SENTENCE = re.compile("[.!?\u2026]+[\"'\u201d\u2019)\\]]*\\s+|\n+")
_CLAUSE = re.compile(r"[,;:]\s+")


class ReleaseBuffer:
    """Collects generated deltas and hands back complete units.

    Args:
        min_clause_chars: A clause boundary ends a unit only when this much text is held.
        max_chars: Held text that reaches this length is released without a boundary.

    Example:
        >>> b = ReleaseBuffer()
        >>> b.add("Hello there. How")
        'Hello there. '
        >>> b.add(" are you?")
        >>> b.flush()
        'How are you?'
    """

    def __init__(self, min_clause_chars: int = 48, max_chars: int = 240) -> None:
        if not 1 <= min_clause_chars <= max_chars:
            raise ValueError(
                f"min_clause_chars={min_clause_chars}, max_chars={max_chars}: "
                "need 1 <= min_clause_chars <= max_chars"
            )
        self.min_clause_chars = min_clause_chars
        self.max_chars = max_chars
        self._held = ""
        self._started = False

    def add(self, delta: str) -> str | None:
        """Hold ``delta``; return the text that completes a unit (possibly several
        sentences), or ``None`` while the unit is incomplete."""
        if not self._started:  # the reply starts at its first non-space character
            delta = delta.lstrip()
            self._started = bool(delta)
        self._held += delta
        end = 0
        for m in _SENTENCE.finditer(self._held):
            end = m.end()
        if not end and len(self._held) >= self.min_clause_chars:
            for m in _CLAUSE.finditer(self._held):
                if m.start() + 1 >= self.min_clause_chars:
                    end = m.end()
        if not end and len(self._held) >= self.max_chars:
            space = self._held.rfind(" ", 0, self.max_chars)
            end = space + 1 if space > 0 else self.max_chars
        if not end:
            return None
        unit, self._held = self._held[:end], self._held[end:]
        return unit

    def flush(self) -> str:
        """The held rest at the end of generation, trailing space removed."""
        rest, self._held = self._held.rstrip(), ""
        return rest


@dataclass(frozen=True)
class Checked:
    """What check-before-release generation left: the last verdict (of the complete reply
    unless a check failed), the passed text, the passed units not yet sent, and the time in
    the model and in the output guard (ms)."""

    verdict: Verdict
    text: str
    pending: list[str]
    generate_ms: float
    check_ms: float


def release_checked(
    stream: Iterator[str],
    check: Callable[[str], Verdict],
    stop: ShouldStop,
    buffer: ReleaseBuffer,
) -> Generator[TextDelta, None, Checked]:
    """Generate, and release units only once the output guard has passed the reply so far
    with them. A check that fires holds its units back (a first sentence alone can read as
    advice that the whole reply is not) and generation goes on; the next check reads the
    longer reply. The last check reads the complete reply, as ``turn`` always did: when it
    fires, nothing held is released. A check that fails (its verdict has an ``error``) stops
    at once. A passed unit is yielded when the model produces more text, so the units passed by
    the final check are left ``pending``, for the pipeline to send after the turn is stored: a
    client that saw the whole reply knows it was stored, and one that left before stored
    nothing.

    Args:
        stream: The model's deltas; closed when this ends, so a stopped model is freed.
        check: The output guard on a reply so far (never raises: a failure is a verdict).
        stop: True once the turn must stop.
        buffer: Cuts the deltas into units.

    Raises:
        Cancelled: ``stop()`` became true.
        Unavailable: the model failed (raised by ``stream``).
    """
    passed: list[str] = []  # every unit the guard passed, in order
    ready: list[str] = []  # passed, not yet yielded
    held: list[str] = []  # generated, not yet passed
    verdict: Verdict | None = None
    check_ms = 0.0
    t0 = time.perf_counter()
    try:
        while True:
            delta = next(stream, None)
            if stop():
                raise Cancelled("the turn was cancelled before it was stored")
            if delta is not None and ready:  # more is coming: these are not the last
                for part in ready:
                    yield TextDelta(part)
                ready = []
            unit = buffer.add(delta) if delta is not None else buffer.flush()
            if unit:
                held.append(unit)
                t1 = time.perf_counter()
                verdict = check("".join(passed + held))
                check_ms += _ms(t1)
                if verdict.error is not None:
                    break  # fail closed, at once
                if not verdict.fired:
                    passed += held
                    ready += held
                    held = []
            if delta is None:
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # a stopped generator frees the model at once
    if verdict is None:  # nothing was generated: the (empty) reply is still checked
        t1 = time.perf_counter()
        verdict = check("")
        check_ms += _ms(t1)
    return Checked(
        verdict, "".join(passed), ready, round(_ms(t0) - check_ms, 2), round(check_ms, 2)
    )


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)
