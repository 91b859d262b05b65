"""The embedding safety classifier: a sentence encoder plus a scoring head plus thresholds.

SetFit-style composition: :class:`SafetyClassifier` receives its encoder and head. The default
(:meth:`SafetyClassifier.from_defaults`) uses the embedded all-MiniLM-L6-v2 encoder and the head
shipped in the package.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from ..protocols import Encoder
from ..types import Category, Direction, Role, Verdict
from .heads import ExemplarHead, Head

__all__ = ["ClassifyItem", "SafetyClassifier"]

# Crisis outranks medical: the first label, in this order, that reaches its threshold wins.
_PRIORITY = ("crisis", "medical")


@dataclass(frozen=True)
class ClassifyItem:
    """One input of :meth:`SafetyClassifier.classify_batch`.

    Args:
        text: The message to check.
        role: Who wrote it: ``"user"`` or ``"assistant"``.
        context: Earlier user turns, oldest first (used for user messages).
    """

    text: str
    role: Role = Role.USER
    context: tuple[str, ...] = ()


class SafetyClassifier:
    """Scores messages for ``crisis`` and ``medical`` content.

    Args:
        encoder: Produces normalised sentence embeddings.
        head: Turns embeddings into per-label scores.
        thresholds: Per label, the score at or above which the label fires.
        policy_version: Recorded in every verdict.

    Example:
        >>> clf = SafetyClassifier.from_defaults()
        >>> clf.classify("I want to kill myself").category
        <Category.CRISIS: 'crisis'>
    """

    def __init__(
        self,
        encoder: Encoder,
        head: Head,
        thresholds: Mapping[str, float],
        policy_version: str,
    ) -> None:
        missing = set(head.labels) - set(thresholds)
        if missing:
            raise ValueError(f"thresholds missing for labels {sorted(missing)}")
        self.encoder = encoder
        self.head = head
        self.thresholds = dict(thresholds)
        self.policy_version = policy_version

    @classmethod
    def from_defaults(cls, encoder: Encoder | None = None) -> SafetyClassifier:
        """The shipped classifier on the embedded encoder (or on ``encoder`` if given)."""
        if encoder is None:
            from ..models.encoder import load_encoder

            encoder = load_encoder()
        return cls.from_exemplars(encoder)

    @classmethod
    def from_exemplars(
        cls, encoder: Encoder, spec: Mapping[str, Any] | None = None
    ) -> SafetyClassifier:
        """A nearest-neighbour classifier over labelled examples (``data/exemplars.json``)."""
        if spec is None:
            raw = resources.files(__package__).joinpath("data/exemplars.json").read_text("utf-8")
            spec = json.loads(raw)
        examples = {
            Role(role): {label: encoder.encode(texts) for label, texts in spec[role].items()}
            for role in ("user", "assistant")
        }
        return cls(encoder, ExemplarHead(examples), spec["thresholds"], spec["policy_version"])

    def classify(
        self, text: str, role: Role | str = Role.USER, context: Sequence[str] = ()
    ) -> Verdict:
        """Check one message.

        Args:
            text: The message.
            role: ``"user"`` for the person's message, ``"assistant"`` for a model reply.
            context: Earlier user turns, oldest first.

        Returns:
            The verdict; its category is ``NONE`` unless a score reached its threshold.
        """
        return self.classify_batch([ClassifyItem(text, Role(role), tuple(context))])[0]

    def classify_batch(self, items: Sequence[ClassifyItem]) -> list[Verdict]:
        """Check many messages in one encoder pass."""
        if not items:
            return []
        embeddings = self.encoder.encode([item.text for item in items])
        roles = np.array([Role(item.role) is Role.USER for item in items])
        scores = np.zeros((len(items), len(self.head.labels)), dtype=np.float32)
        for role, mask in ((Role.USER, roles), (Role.ASSISTANT, ~roles)):
            if mask.any():
                scores[mask] = self.head.scores(embeddings[mask], role)
        return [
            self._verdict(row, Role(item.role)) for row, item in zip(scores, items, strict=True)
        ]

    def _verdict(self, row: np.ndarray, role: Role) -> Verdict:
        by_label = {
            label: round(float(s), 4) for label, s in zip(self.head.labels, row, strict=True)
        }
        category = Category.NONE
        for label in _PRIORITY:
            if label in by_label and by_label[label] >= self.thresholds[label]:
                category = Category(label)
                break
        direction = Direction.INPUT if role is Role.USER else Direction.OUTPUT
        return Verdict(category, by_label, dict(self.thresholds), self.policy_version, direction)
