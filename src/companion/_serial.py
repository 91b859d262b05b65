"""Turns of one session one at a time, on a store several processes share.

A store that is a :class:`~companion.protocols.LockingSessionStore` (Redis) lends each turn
its session's lock, from the history read to the append; see ``companion.sessions._lock``.
Other stores serve one process, whose server runs turns one at a time anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .protocols import LockingSessionStore, SessionStore, ShouldStop, TurnLock
from .types import Turn

__all__ = ["append_turn", "kept_while", "lock_turn"]


def lock_turn(store: SessionStore, session_id: str, should_stop: ShouldStop) -> TurnLock | None:
    """The session's turn lock from a shared store (waiting for it), else ``None``."""
    if isinstance(store, LockingSessionStore):
        return store.lock_turn(session_id, should_stop)
    return None


def kept_while(deltas: Iterator[str], lock: TurnLock | None) -> Iterator[str]:
    """The model's ``deltas``, renewing ``lock``'s lease after each one (the turn holds its
    session while the model writes); closing this closes ``deltas``."""
    if lock is None:
        yield from deltas
        return
    try:
        for delta in deltas:
            lock.keep()
            yield delta
    finally:
        close = getattr(deltas, "close", None)
        if close is not None:
            close()


def append_turn(
    store: SessionStore,
    session_id: str,
    turns: Sequence[Turn],
    request_id: str | None,
    outcome: str,
    lock: TurnLock | None,
    max_turns: int | None,
) -> list[Turn]:
    """``store.append`` (refused past ``max_turns``), under ``lock`` when there is one:
    renewed first, released right after (the next turn of the session need not wait while this
    one's reply is sent)."""
    if lock is None or not isinstance(store, LockingSessionStore):
        return store.append(session_id, turns, request_id, outcome, max_turns=max_turns)
    try:
        lock.keep()
        return store.append(session_id, turns, request_id, outcome, lock=lock, max_turns=max_turns)
    finally:
        lock.release()
