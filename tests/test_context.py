"""Context assembly keeps the system prompt and the newest message, dropping oldest first."""

from __future__ import annotations

import pytest

from companion import InvalidArgument, Role, Turn
from companion.context import build_messages


def count(messages):
    return sum(len(m["content"].split()) + 4 for m in messages)


def turns(n: int) -> list[Turn]:
    out = []
    for i in range(n):
        out.append(Turn(Role.USER, f"user {i} " + "w " * 8, 0.0))
        out.append(Turn(Role.ASSISTANT, f"assistant {i} " + "w " * 8, 0.0))
    return out


def test_everything_fits():
    msgs = build_messages("sys", turns(3), "newest", count, budget=10_000)
    assert len(msgs) == 8 and msgs[0]["role"] == "system" and msgs[-1]["content"] == "newest"


def test_oldest_exchanges_are_dropped_first_and_system_and_newest_kept():
    history = turns(10)  # each message: 10 words + 4 = 14 tokens
    budget = count([{"content": "sys"}, {"content": "newest"}]) + 3 * 28
    msgs = build_messages("sys", history, "newest", count, budget)
    assert count(msgs) <= budget
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert msgs[-1] == {"role": "user", "content": "newest"}
    kept = [m["content"].split()[1] for m in msgs[1:-1]]
    assert kept == ["7", "7", "8", "8", "9", "9"]  # the three newest exchanges
    assert msgs[1]["role"] == "user"  # never starts on an orphaned assistant turn


def test_only_system_and_newest_when_history_cannot_fit():
    msgs = build_messages("sys", turns(5), "newest", count, budget=12)
    assert [m["role"] for m in msgs] == ["system", "user"]


def test_newest_message_alone_too_long_is_invalid():
    with pytest.raises(InvalidArgument, match="context window"):
        build_messages("sys", [], "word " * 100, count, budget=50)
