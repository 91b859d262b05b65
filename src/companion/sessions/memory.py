"""A process-local session store, for tests and for embedding without persistence."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

from ..errors import SessionNotFound
from ..types import SessionInfo, Turn

__all__ = ["InMemorySessionStore"]


class InMemorySessionStore:
    """Keeps sessions in a dict; everything is lost when the process ends. Thread-safe."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionInfo] = {}
        self._turns: dict[str, list[Turn]] = {}
        self._lock = threading.Lock()

    def create(self, info: SessionInfo) -> None:
        """Store a new session."""
        with self._lock:
            if info.id in self._sessions:
                raise ValueError("session id already exists")
            self._sessions[info.id] = info
            self._turns[info.id] = []

    def get(self, session_id: str) -> SessionInfo | None:
        """The session, or ``None``."""
        with self._lock:
            return self._sessions.get(session_id)

    def append(self, session_id: str, turns: Sequence[Turn]) -> list[Turn]:
        """Append ``turns`` atomically; returns them with indices set."""
        with self._lock:
            stored = self._turns.get(session_id)
            if stored is None:
                raise SessionNotFound(f"session {session_id} not found")
            start = len(stored)
            added = [replace(t, index=start + i) for i, t in enumerate(turns)]
            stored.extend(added)
            return added

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """Turns in order from ``offset``, at most ``limit``."""
        with self._lock:
            stored = self._turns.get(session_id)
            if stored is None:
                raise SessionNotFound(f"session {session_id} not found")
            end = None if limit is None else offset + limit
            return list(stored[offset:end])

    def delete(self, session_id: str) -> bool:
        """Erase the session; False if unknown."""
        with self._lock:
            self._turns.pop(session_id, None)
            return self._sessions.pop(session_id, None) is not None

    def close(self) -> None:
        """Nothing to release."""
