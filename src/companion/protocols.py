"""The small interfaces every backend implements (house rule: one Protocol per model role)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .config import GenerationConfig
from .types import Role, SessionInfo, StoredRequest, Turn, Verdict

__all__ = [
    "ChatMessage",
    "Encoder",
    "Generator",
    "LockingSessionStore",
    "SafetyGuard",
    "SessionStore",
    "ShouldStop",
    "TurnLock",
]

ChatMessage = dict[str, str]
"""``{"role": "system"|"user"|"assistant", "content": str}``, the chat-template format."""

ShouldStop = Callable[[], bool]
"""Polled between generated tokens; returning True aborts generation (cancel or deadline)."""


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised sentence embeddings."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``; returns an array of shape ``(len(texts), dim)``."""
        ...


@runtime_checkable
class SafetyGuard(Protocol):
    """Scores a message for crisis and medical-advice content."""

    policy_version: str

    def classify(
        self,
        text: str,
        role: Role | str = Role.USER,
        context: Sequence[str] = (),
        last_assistant: str = "",
    ) -> Verdict:
        """Check ``text`` written by ``role``; ``context``: earlier user turns, oldest first;
        ``last_assistant``: the companion's previous message when it was the check-in question
        (``text`` answers it), else ``""``."""
        ...


@runtime_checkable
class Generator(Protocol):
    """A chat language model."""

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the prompt for ``messages`` takes, generation prompt included."""
        ...

    @property
    def context_window(self) -> int:
        """Maximum tokens of prompt plus reply."""
        ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        """Yield the reply as text deltas; stops early when ``should_stop()`` is true."""
        ...


@runtime_checkable
class SessionStore(Protocol):
    """Server-side conversation storage."""

    def create(self, info: SessionInfo, max_per_owner: int | None = None) -> None:
        """Store a new session.

        With ``max_per_owner``, the count of the owner's sessions and the insert are one
        atomic step: concurrent creates never take an owner past it.

        Raises:
            ResourceExhausted: ``info.owner`` holds ``max_per_owner`` sessions already; nothing
                was stored.
        """
        ...

    def get(self, session_id: str) -> SessionInfo | None:
        """The session, or ``None`` if it does not exist."""
        ...

    def append(
        self,
        session_id: str,
        turns: Sequence[Turn],
        request_id: str | None = None,
        outcome: str = "",
        *,
        max_turns: int | None = None,
    ) -> list[Turn]:
        """Append ``turns`` atomically (all or none); returns them with their indices set.

        With ``request_id``, the id and ``outcome`` (opaque text) are stored with the turns in
        the same atomic step, for :meth:`find_request`; an id is unique within a session.
        With ``max_turns``, a session would hold more turns than that refuses the append, in
        the same atomic step.

        Raises:
            SessionNotFound: no such session.
            DuplicateRequest: the session already holds turns under ``request_id``; nothing
                was appended.
            FailedPrecondition: the session would hold more than ``max_turns`` turns;
                nothing was appended.
            Unavailable: the store failed (``component="store"``); nothing was appended.
        """
        ...

    def find_request(self, session_id: str, request_id: str) -> StoredRequest | None:
        """The turns stored under ``request_id`` in this session, or ``None``."""
        ...

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """Turns in order, ``offset`` first, at most ``limit``.

        Raises:
            SessionNotFound: no such session.
        """
        ...

    def recent(self, session_id: str, limit: int) -> list[Turn]:
        """The newest ``limit`` turns (with their indices), oldest first; reads no more.

        Raises:
            SessionNotFound: no such session.
        """
        ...

    def delete(self, session_id: str) -> bool:
        """Erase the session and its turns; False if it did not exist."""
        ...

    def purge_expired(self, created_before: float) -> int:
        """Erase every session created before ``created_before`` (seconds since the epoch),
        with its turns and request ids, as thoroughly as :meth:`delete`; returns how many."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


@runtime_checkable
class TurnLock(Protocol):
    """One turn's exclusive, expiring hold on its session (see :class:`LockingSessionStore`).

    Attributes:
        waited_ms: How long the turn waited for it.
    """

    waited_ms: float

    def keep(self) -> None:
        """Renew the hold; cheap enough to call for every generated token.

        Raises:
            Unavailable: the hold was lost (its lease lapsed); the turn must not be stored.
        """
        ...

    def release(self) -> None:
        """Give the session back; a no-op once released. Never raises."""
        ...


@runtime_checkable
class LockingSessionStore(SessionStore, Protocol):
    """A store several server processes share, whose turns must not overlap.

    The pipeline takes the session's lock before it reads the history, keeps it while it
    generates, appends with it and releases it, so each turn's prompt holds every turn stored
    before it, whichever process ran them. A store used by one process needs none of this:
    the server runs its turns one at a time.
    """

    def lock_turn(self, session_id: str, should_stop: ShouldStop) -> TurnLock:
        """Wait for and take the session's turn lock.

        Raises:
            Unavailable: it stayed taken too long, or the store cannot be reached.
            Cancelled: ``should_stop()`` became true while waiting.
        """
        ...

    def append(
        self,
        session_id: str,
        turns: Sequence[Turn],
        request_id: str | None = None,
        outcome: str = "",
        lock: TurnLock | None = None,
        *,
        max_turns: int | None = None,
    ) -> list[Turn]:
        """:meth:`SessionStore.append`, refused (``Unavailable``, nothing written) when
        ``lock`` no longer holds the session."""
        ...
