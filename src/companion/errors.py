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
    "InvalidArgument",
    "ModelLoadError",
    "PermissionDenied",
    "ResourceExhausted",
    "SessionNotFound",
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


class ResourceExhausted(CompanionError):
    """A capacity limit was hit (too many sessions, turns, or concurrent requests)."""


class Unavailable(CompanionError):
    """The service cannot answer now (models not loaded, shutting down); retry later."""


class DeadlineExceeded(CompanionError):
    """The caller's deadline passed before the turn finished; nothing was stored."""


class Cancelled(CompanionError):
    """The caller cancelled the turn; nothing was stored."""


class ModelLoadError(CompanionError, RuntimeError):
    """A model, adapter or package could not be found or loaded; the message says which."""
