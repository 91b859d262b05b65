"""The events of a streamed turn, and the replay of a stored one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .types import Action, Category, Reply

__all__ = ["StreamEvent", "TextDelta", "TurnDone", "Withheld", "replay_events"]


@dataclass(frozen=True)
class TextDelta:
    """A unit of generated text (a sentence, a clause or a length budget), in order. Every
    delta has been read by the output guard, with all the text before it, before it is
    yielded: no generated text leaves the pipeline unchecked."""

    text: str


@dataclass(frozen=True)
class Withheld:
    """The output guard stopped the reply: generation ended and the rest was not released.
    Any text shown for this turn must be discarded (it was checked, but it is not the stored
    turn); the following :class:`TurnDone` carries the fixed message that replaces it.

    Args:
        category: The category of the check that fired.
    """

    category: Category


@dataclass(frozen=True)
class TurnDone:
    """The turn's outcome; always the last event.

    Args:
        reply: The stored reply.
        withheld: True when the output guard stopped the generated reply (a
            :class:`Withheld` event came first); ``reply.text`` is then the fixed message.
    """

    reply: Reply
    withheld: bool = False


StreamEvent = TextDelta | Withheld | TurnDone


def replay_events(reply: Reply) -> Iterator[StreamEvent]:
    """The events that replay a stored reply: its model text as one :class:`TextDelta` (none
    for a fixed message), or :class:`Withheld` when the output check stopped it; then
    :class:`TurnDone`."""
    withheld = reply.output_verdict is not None and reply.output_verdict.fired
    if withheld:
        yield Withheld(reply.category)
    elif reply.action is Action.ANSWERED:
        yield TextDelta(reply.text)
    yield TurnDone(reply, withheld=withheld)
