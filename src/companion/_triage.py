"""Check-in state of a conversation, read from its stored turns.

The classifier is stateless; the pipeline derives what it needs from the session's history, so
the state survives restarts and replicas with the turns themselves:

- the companion's last message, when it was the check-in question: the newest user message is
  its answer, and the guard is told so;
- after a check-in answered with a clear no (that exchange was answered), a quiet period of a
  few turns in which a new check-in is held back unless the risk score rises above the one
  that asked. A redirect is never held back, and an uncertain answer to the question itself
  (the guard still sees possible risk) redirects rather than asking twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .types import Action, Category, Decision, Role, Turn, Verdict

__all__ = ["TriageState", "apply_triage", "model_history", "triage_state"]


@dataclass(frozen=True)
class TriageState:
    """What the guard's decision depends on besides the newest message.

    Args:
        check_in: The companion's last message when it was the check-in question, else ``""``.
        quiet_above: During a quiet period, the risk score a new check-in must exceed; ``None``
            outside one.
    """

    check_in: str = ""
    quiet_above: float | None = None


def _exchanges(history: Sequence[Turn]) -> list[tuple[Turn, Turn]]:
    return [
        (user, reply)
        for user, reply in itertools.pairwise(history)
        if user.role is Role.USER and reply.role is Role.ASSISTANT
    ]


def triage_state(history: Sequence[Turn], quiet_turns: int) -> TriageState:
    """The check-in state after ``history`` (stored turns, oldest first)."""
    pairs = _exchanges(history)
    if not pairs:
        return TriageState()
    if pairs[-1][1].action is Action.CHECKED_IN:
        return TriageState(check_in=pairs[-1][1].text)
    asked = next(
        (i for i in range(len(pairs) - 1, -1, -1) if pairs[i][1].action is Action.CHECKED_IN),
        None,
    )
    if asked is None or asked + 1 >= len(pairs):
        return TriageState()
    answered = pairs[asked + 1][1].action is Action.ANSWERED
    if not answered or len(pairs) - (asked + 1) > quiet_turns:
        return TriageState()
    return TriageState(quiet_above=float(pairs[asked][0].scores.get("risk", 0.0)))


def apply_triage(verdict: Verdict, state: TriageState) -> tuple[Verdict, bool]:
    """The input verdict after the conversation's check-in state; also whether a check-in was
    held back by a quiet period."""
    if verdict.decision is not Decision.CHECK_IN or verdict.error is not None:
        return verdict, False
    if state.check_in:  # still unsure after asking directly: treat it as a yes
        return replace(verdict, decision=Decision.REDIRECT), False
    risk = float(verdict.scores.get("risk", 1.0))
    if state.quiet_above is not None and risk <= state.quiet_above:
        return replace(verdict, category=Category.NONE, decision=Decision.NONE), True
    return verdict, False


def model_history(history: Sequence[Turn]) -> list[Turn]:
    """The turns the model may see: answered exchanges only.

    Redirected and checked-in exchanges (and their user turns) are left out, so that risk talk
    the model never wrote cannot prime its next reply.
    """
    return [t for t in history if t.action is Action.ANSWERED]
