"""Hand-written fakes for unit tests (real models live in the integration tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from companion.config import GenerationConfig
from companion.protocols import ChatMessage, ShouldStop
from companion.types import Category, Decision, Direction, Role, Verdict

THRESHOLDS = {"crisis": 0.5, "medical": 0.5, "risk": 0.5}


class FakeGuard:
    """Flags texts that contain a trigger word; records every call.

    ``CRISIS`` and ``MEDICAL`` redirect; ``RISK<n>`` (e.g. ``RISK6``) checks in with risk score
    0.n, and a plain ``RISK`` with 0.6. The ``last_assistant`` of each call is in
    :attr:`answers`.
    """

    policy_version = "fake-1"

    def __init__(self, triggers: dict[str, Category] | None = None, raise_on: Role | None = None):
        self.triggers = triggers or {"CRISIS": Category.CRISIS, "MEDICAL": Category.MEDICAL}
        self.raise_on = raise_on
        self.calls: list[tuple[str, Role, tuple[str, ...]]] = []
        self.answers: list[str] = []

    def classify(
        self,
        text: str,
        role: Role | str = Role.USER,
        context: Sequence[str] = (),
        last_assistant: str = "",
    ) -> Verdict:
        role = Role(role)
        self.calls.append((text, role, tuple(context)))
        self.answers.append(last_assistant)
        if self.raise_on is role:
            raise RuntimeError("guard backend down")
        scores = {"crisis": 0.0, "medical": 0.0, "risk": 0.0}
        category, decision = Category.NONE, Decision.NONE
        for word, cat in self.triggers.items():
            if word in text:
                scores[cat.value] = 0.99
                if category is Category.NONE or cat is Category.CRISIS:
                    category, decision = cat, Decision.REDIRECT
        at = text.find("RISK")
        if at >= 0 and category is Category.NONE:
            digit = text[at + 4 : at + 5]
            scores["risk"] = int(digit) / 10 if digit.isdigit() else 0.6
            category, decision = Category.CRISIS, Decision.CHECK_IN
        direction = Direction.INPUT if role is Role.USER else Direction.OUTPUT
        return Verdict(category, scores, THRESHOLDS, self.policy_version, direction, None, decision)


class WordTokens:
    """``count_tokens`` for fake generators: one token per whitespace-separated word plus 4 per
    message, which is enough to test the context budget."""

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)


class FakeGenerator(WordTokens):
    """Replies from a script; fails loudly when called more often than scripted."""

    def __init__(
        self,
        responses: Sequence[str] = (),
        context_window: int = 10_000,
        on_token: Callable[[int], None] | None = None,
    ):
        self.responses = list(responses)
        self.calls: list[list[ChatMessage]] = []
        self._context_window = context_window
        self.on_token = on_token

    @property
    def context_window(self) -> int:
        return self._context_window

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        if not self.responses:
            raise AssertionError("FakeGenerator called more often than scripted")
        self.calls.append(list(messages))
        reply = self.responses.pop(0)
        for i, word in enumerate(reply.split(" ")):
            if should_stop is not None and should_stop():
                return
            if self.on_token is not None:
                self.on_token(i)
            yield word if i == 0 else " " + word
