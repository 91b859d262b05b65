"""Keys and values of recent token sequences, for :class:`~companion.models.BatchedGenerator`'s
prefills to start from.

A session's next prompt starts with its last prompt and the reply the model wrote to it (the
system prompt, then the earlier turns), so the worker keeps the key/value cache of every prompt
it prefills and of every reply it finishes, and a new prompt is prefilled only after the longest
start it shares with one of them. Entries are evicted oldest first past a byte budget. They hold
conversation state in the model's device memory only (never on disk), and go with the process
or with eviction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

__all__ = ["PrefixCache"]

KV = list[tuple[Any, Any]]  # per layer: (keys, values), each (1, heads, length, dim)


class PrefixCache:
    """Token sequences and their per-layer keys and values, oldest evicted first.

    Args:
        max_bytes: Budget for the stored tensors; 0 keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes}: need >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[KV, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes the stored tensors take."""
        return self._bytes

    def longest(self, ids: Sequence[int]) -> tuple[int, KV | None]:
        """The longest start of ``ids`` that a stored sequence shares, and that sequence's
        keys and values (``(0, None)`` when none shares a token); the entry becomes newest."""
        best, best_key = 0, None
        for key in self._entries:
            n = common_length(key, ids)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, self._entries[best_key][0]

    def put(self, ids: Sequence[int], kv: KV) -> None:
        """Store ``kv`` (covering exactly ``ids``); stored sequences that ``ids`` starts with
        are dropped, since the new entry serves them too."""
        key = tuple(ids)
        size = sum(_nbytes(k) + _nbytes(v) for k, v in kv)
        if size > self.max_bytes:
            return
        for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._bytes -= self._entries.pop(old)[1]
        self._entries[key] = (kv, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            self._bytes -= freed


def _nbytes(t: Any) -> int:
    return int(t.nelement() * t.element_size())


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
