"""How much of a session's history one turn reads: what its checks and the model's window use.

A turn needs the last few turns for the guard's context and the check-in state, and for the
model as many answered exchanges as fit its window. So it reads the newest turns only
(:meth:`SessionStore.recent <companion.protocols.SessionStore.recent>`): first
:data:`FIRST_READ` (or what the checks need, if more), and, when the model will answer and all
of those fit its window, four times as many, and so on, up to the most turns the window could
ever hold (:func:`window_bound`). Never the whole history of a long session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._triage import model_history
from .protocols import ChatMessage, SessionStore
from .sessions._limits import turns_over
from .types import Turn

__all__ = [
    "FIRST_READ",
    "checks_need",
    "fits_window",
    "read_for_model",
    "session_is_full",
    "window_bound",
]

TokenCounter = Callable[[Sequence[ChatMessage]], int]

FIRST_READ = 64
"""Turns read first: the checks' need, and the window's for most sessions."""


def checks_need(guard_context_turns: int, check_in_quiet_turns: int) -> int:
    """Turns the input guard's context and the check-in state read: the last
    ``guard_context_turns`` user turns, and the exchanges of a quiet period after a check-in
    (the check-in, its answer and ``check_in_quiet_turns`` more), with their replies."""
    return 2 * max(guard_context_turns, check_in_quiet_turns + 2)


def session_is_full(newest: Sequence[Turn], limit: int | None) -> bool:
    """Whether a session whose newest turns are ``newest`` (with their indexes, oldest first)
    has no room for one more exchange under ``limit`` (``max_turns_per_session``; ``None``: no
    limit). The store refuses such an append again, atomically."""
    return turns_over(newest[-1].index + 1 if newest else 0, 2, limit)


def fits_window(
    count_tokens: TokenCounter, system_prompt: str, text: str, budget: int
) -> Callable[[list[Turn]], bool]:
    """Whether the answered exchanges of some turns, with the system prompt and the newest
    message ``text``, fit in ``budget`` prompt tokens."""
    system: ChatMessage = {"role": "system", "content": system_prompt}
    last: ChatMessage = {"role": "user", "content": text}

    def fits(turns: list[Turn]) -> bool:
        kept = [{"role": t.role.value, "content": t.text} for t in model_history(turns)]
        return count_tokens([system, *kept, last]) <= budget

    return fits


def window_bound(count_tokens: TokenCounter, system_prompt: str, budget: int) -> int:
    """The most stored turns a prompt of ``budget`` tokens could hold.

    Every stored turn has at least one character, so it takes at least the tokens of a
    one-character message: the budget left after the system prompt and the newest message,
    over that, bounds the turns that can fit.
    """
    system: ChatMessage = {"role": "system", "content": system_prompt}
    newest: ChatMessage = {"role": "user", "content": "x"}
    base = count_tokens([system, newest])
    pair = count_tokens(
        [system, {"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}, newest]
    )
    per_turn = max(1, (pair - base) // 2)
    return max(0, budget - base) // per_turn + 2


def read_for_model(
    store: SessionStore,
    session_id: str,
    turns: list[Turn],
    bound: int,
    fits: Callable[[list[Turn]], bool],
) -> list[Turn]:
    """``turns`` (the newest turns, read already) extended to older ones while all of them
    ``fit`` the window and older ones exist, up to ``bound`` turns."""
    while turns and turns[0].index > 0 and len(turns) < bound and fits(turns):
        more = store.recent(session_id, min(bound, 4 * len(turns)))
        if len(more) <= len(turns):  # nothing older after all
            break
        turns = more
    return turns
