"""Release units for check-before-release streaming.

Generated text is held back until a unit is complete: a sentence (up to and including its
closing punctuation, or a line break), a clause (at ``,;:``) once the held text is at least
``min_clause_chars`` long, or ``max_chars`` characters when no boundary comes (cut at the last
space when there is one). The pipeline runs the output guard on the reply so far plus the unit
and only then releases the unit to the client.
"""

from __future__ import annotations

import re

__all__ = ["ReleaseBuffer"]

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
