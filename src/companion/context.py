"""Context assembly: the chat messages the model sees for one turn.

The conversation is kept inside the model's window by dropping the oldest exchanges first; the
system prompt and the newest user message are always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import InvalidArgument
from .protocols import ChatMessage
from .types import Role, Turn

__all__ = ["build_messages"]


def build_messages(
    system_prompt: str,
    history: Sequence[Turn],
    user_text: str,
    count_tokens: Callable[[Sequence[ChatMessage]], int],
    budget: int,
) -> list[ChatMessage]:
    """Assemble ``[system, *history, user]`` within ``budget`` prompt tokens.

    Oldest turns go first, a whole exchange at a time, so the kept history never starts with an
    orphaned assistant reply.

    Args:
        system_prompt: Always the first message.
        history: Earlier turns, oldest first.
        user_text: The newest user message; always the last message.
        count_tokens: Token count of a message list as the model will see it.
        budget: Most tokens the prompt may take (the window minus room for the reply).

    Raises:
        InvalidArgument: the system prompt and the newest message alone exceed ``budget``.
    """
    system: ChatMessage = {"role": "system", "content": system_prompt}
    newest: ChatMessage = {"role": "user", "content": user_text}
    turns = [{"role": t.role.value, "content": t.text} for t in history]
    if count_tokens([system, newest]) > budget:
        raise InvalidArgument("the message is too long for the model's context window")
    # Find the smallest start index that fits. Token counts grow monotonically as start falls,
    # so a binary search over exchange boundaries needs O(log n) template renders, not O(n).
    starts = [i for i, t in enumerate(history) if t.role is Role.USER] + [len(turns)]
    lo, hi = 0, len(starts) - 1  # starts[hi] (empty history) always fits
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens([system, *turns[starts[mid] :], newest]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return [system, *turns[starts[lo] :], newest]
