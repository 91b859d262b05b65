"""A process-local session store, for tests and for embedding without persistence."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

from ..errors import DuplicateRequest, SessionNotFound
from ..types import SessionInfo, StoredRequest, Turn
from ._limits import refuse_owner, refuse_turns

__all__ = ["InMemorySessionStore"]


class InMemorySessionStore:
    """Keeps sessions in a dict; everything is lost when the process ends. Thread-safe."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionInfo] = {}
        self._turns: dict[str, list[Turn]] = {}
        # session id -> request id -> (index of the first turn, number of turns, outcome)
        self._requests: dict[str, dict[str, tuple[int, int, str]]] = {}
        self._lock = threading.Lock()

    def create(self, info: SessionInfo, max_per_owner: int | None = None) -> None:
        """Store a new session (at most ``max_per_owner`` per owner)."""
        with self._lock:
            if info.id in self._sessions:
                raise ValueError("session id already exists")
            if max_per_owner is not None:
                held = sum(1 for s in self._sessions.values() if s.owner == info.owner)
                refuse_owner(held, max_per_owner)
            self._sessions[info.id] = info
            self._turns[info.id] = []
            self._requests[info.id] = {}

    def get(self, session_id: str) -> SessionInfo | None:
        """The session, or ``None``."""
        with self._lock:
            return self._sessions.get(session_id)

    def append(
        self,
        session_id: str,
        turns: Sequence[Turn],
        request_id: str | None = None,
        outcome: str = "",
        *,
        max_turns: int | None = None,
    ) -> list[Turn]:
        """Append ``turns`` atomically, with ``request_id`` if given; returns them with indices
        set.

        Raises:
            SessionNotFound: no such session.
            DuplicateRequest: ``request_id`` already names turns of this session.
            FailedPrecondition: the session would hold more than ``max_turns`` turns.
        """
        with self._lock:
            stored = self._turns.get(session_id)
            if stored is None:
                raise SessionNotFound(f"session {session_id} not found")
            requests = self._requests[session_id]
            if request_id is not None and request_id in requests:
                raise DuplicateRequest("the session already holds turns under this request id")
            start = len(stored)
            refuse_turns(start, len(turns), max_turns)
            added = [replace(t, index=start + i) for i, t in enumerate(turns)]
            stored.extend(added)
            if request_id is not None:
                requests[request_id] = (start, len(added), outcome)
            return added

    def find_request(self, session_id: str, request_id: str) -> StoredRequest | None:
        """The turns stored under ``request_id``, or ``None``."""
        with self._lock:
            found = self._requests.get(session_id, {}).get(request_id)
            if found is None:
                return None
            start, count, outcome = found
            turns = tuple(self._turns[session_id][start : start + count])
            return StoredRequest(request_id, turns, outcome)

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """Turns in order from ``offset``, at most ``limit``."""
        with self._lock:
            stored = self._turns.get(session_id)
            if stored is None:
                raise SessionNotFound(f"session {session_id} not found")
            end = None if limit is None else offset + limit
            return list(stored[offset:end])

    def recent(self, session_id: str, limit: int) -> list[Turn]:
        """The newest ``limit`` turns, oldest first."""
        with self._lock:
            stored = self._turns.get(session_id)
            if stored is None:
                raise SessionNotFound(f"session {session_id} not found")
            return list(stored[max(0, len(stored) - limit) :])

    def delete(self, session_id: str) -> bool:
        """Erase the session; False if unknown."""
        with self._lock:
            return self._erase(session_id)

    def purge_expired(self, created_before: float) -> int:
        """Erase the sessions created before ``created_before``; returns how many."""
        with self._lock:
            old = [s.id for s in self._sessions.values() if s.created_at < created_before]
            return sum(self._erase(sid) for sid in old)

    def _erase(self, session_id: str) -> bool:
        self._turns.pop(session_id, None)
        self._requests.pop(session_id, None)
        return self._sessions.pop(session_id, None) is not None

    def close(self) -> None:
        """Nothing to release."""
