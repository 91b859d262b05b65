"""The quota checks every session store makes inside its atomic step, with one wording."""

from __future__ import annotations

from ..errors import FailedPrecondition, ResourceExhausted

__all__ = ["owner_full", "refuse_owner", "refuse_turns", "session_full", "turns_over"]


def owner_full(limit: int) -> ResourceExhausted:
    """The error for an owner (API key) that holds ``limit`` sessions, its quota."""
    return ResourceExhausted(
        f"this API key holds {limit} sessions, its limit; delete one or wait until the oldest"
        " expire"
    )


def session_full(limit: int) -> FailedPrecondition:
    """The error for a session that would pass its ``limit`` of stored turns."""
    return FailedPrecondition(
        f"the session has reached its limit of {limit} turns; start a new session"
    )


def refuse_owner(held: int, limit: int | None) -> None:
    """Raise :func:`owner_full` when an owner holding ``held`` sessions may not open another."""
    if limit is not None and held >= limit:
        raise owner_full(limit)


def turns_over(held: int, adding: int, limit: int | None) -> bool:
    """Whether a session holding ``held`` turns may not take ``adding`` more under ``limit``
    (``None``: no limit)."""
    return limit is not None and held + adding > limit


def refuse_turns(held: int, adding: int, limit: int | None) -> None:
    """Raise :func:`session_full` when :func:`turns_over`."""
    if turns_over(held, adding, limit):
        raise session_full(limit or 0)
