"""The one exception hierarchy of the library.

Every error a caller can act on derives from :class:`CompanionError`. The gRPC layer maps each
class to one status code, so a client never sees ``UNKNOWN`` for a bad request. Messages never
contain message or reply text: they name the field, the limit or the id.
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "CompanionError",
    "DeadlineExceeded",
    "DuplicateRequest",
    "FailedPrecondition",
    "GenerationTimeout",
    "GuardTimeout",
    "InvalidArgument",
    "ModelLoadError",
    "PermissionDenied",
    "ResourceExhausted",
    "SessionNotFound",
    "Unauthenticated",
    "Unavailable",
]


class CompanionError(Exception):
    """Base class of every error raised by ``companion``."""


class InvalidArgument(CompanionError, ValueError):
    """The request itself is wrong: empty or oversize text, malformed id, unknown locale."""


class SessionNotFound(CompanionError, KeyError):
    """No session with this id exists (or it belongs to another API key)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "session not found"


class PermissionDenied(CompanionError):
    """The caller is authenticated but may not do this."""


class Unauthenticated(PermissionDenied):
    """The service requires an API key and the call carried none, or a wrong one.

    A subclass of :class:`PermissionDenied`, which the Python clients raised for
    UNAUTHENTICATED before this class existed, so ``except PermissionDenied`` still catches it.
    """


class FailedPrecondition(CompanionError):
    """The request is well formed but conflicts with what is stored: a request id that already
    names a turn with another message. Retrying it unchanged fails again."""


class DuplicateRequest(CompanionError):
    """Raised by :meth:`SessionStore.append <companion.protocols.SessionStore.append>` when the
    session already holds turns under the request id; nothing was appended. The pipeline
    answers it with the stored reply, so it never reaches a caller of the library."""


class ResourceExhausted(CompanionError):
    """A capacity limit was hit (too many sessions, turns, or concurrent requests).

    Args:
        message: What was exhausted (never request text).
        retry_after_ms: When the caller may retry, in milliseconds, if the server gave a hint
            (the service sends it as ``retry-after-ms`` trailing metadata); else ``None``.
    """

    def __init__(self, message: str = "", *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(CompanionError):
    """The service cannot answer now (models not loaded, shutting down, a fault); retry later.

    Args:
        message: What is unavailable (never request text).
        component: When a fault caused it, the part that failed: ``"generator"`` or
            ``"store"``; the service logs and counts it (``companion_faults_total``).
        reason: What went wrong with it: ``"error"``, ``"timeout"``, ``"full"`` (disk or
            database full), ``"locked"`` (database locked) or ``"unreachable"``.
    """

    def __init__(
        self, message: str = "", *, component: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.component = component
        self.reason = reason


class GuardTimeout(CompanionError, TimeoutError):
    """A safety check did not finish within ``PipelineConfig.guard_timeout_seconds``. The
    pipeline fails closed on it (the fixed resource message), so it never reaches a caller."""


class GenerationTimeout(CompanionError, TimeoutError):
    """The model did not finish a reply within ``PipelineConfig.generation_timeout_seconds``.
    The pipeline turns it into :class:`Unavailable`; nothing of the turn is stored."""


class DeadlineExceeded(CompanionError):
    """The caller's deadline passed before the turn finished; nothing was stored."""


class Cancelled(CompanionError):
    """The caller cancelled the turn; nothing was stored."""


class ModelLoadError(CompanionError, RuntimeError):
    """A model, adapter or package could not be found or loaded; the message says which."""
