"""The embedding safety classifier: normalisation + sentence encoder + trained head + thresholds.

SetFit-style composition: :class:`SafetyClassifier` receives its encoder, head and policy. The
default (:meth:`SafetyClassifier.from_defaults`) is the embedded all-MiniLM-L6-v2 encoder on
its lean path plus the logistic-regression head and calibrated thresholds shipped in the package
(``artifacts/default``), produced by ``safety/{prepare,train,calibrate}.py``.

Conversation awareness: a user message is scored from two embeddings, the newest message alone
and the *window* (the last ``policy.context_turns`` user turns plus the newest, oldest first).
The head sees both, so it can learn that "I'm parked next to it now" after questions about a
bridge's height is a crisis, while an old crisis turn followed by "can you suggest a book?" is
not. The classifier itself keeps no state between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..protocols import Encoder
from ..types import Category, Decision, Direction, Role, Verdict
from .artifact import Policy, cross_dir, encoder_adapter_dir, load_artifact
from .cross import CrossReader, load_cross_reader, pair_texts
from .cross import scores as cross_scores
from .features import build_features, feature_blocks
from .heads import FloatArray, Head, LinearHead
from .normalize import normalize
from .topics import raises_risk_topic

__all__ = ["ClassifyItem", "SafetyClassifier", "encoder_inputs", "window_text"]


@dataclass(frozen=True)
class ClassifyItem:
    """One input of :meth:`SafetyClassifier.classify_batch`.

    Args:
        text: The message to check.
        role: Who wrote it: ``"user"`` or ``"assistant"``.
        context: Earlier user turns, oldest first (used for user messages).
        last_assistant: The companion's previous message when it was the check-in question;
            the newest user message is then read as the answer to it. Empty otherwise.
    """

    text: str
    role: Role = Role.USER
    context: tuple[str, ...] = ()
    last_assistant: str = ""

    @property
    def answers_check_in(self) -> bool:
        """True when this user message answers a check-in."""
        return Role(self.role) is Role.USER and bool(self.last_assistant.strip())


def window_text(text: str, context: Sequence[str], turns: int, max_words: int) -> str:
    """The newest message joined after up to ``turns`` earlier turns that fit in ``max_words``.

    The newest message is always kept; older turns are dropped first.
    """
    parts = [text]
    words = len(text.split())
    for turn in reversed(list(context)[-turns:] if turns > 0 else []):
        n = len(turn.split())
        if words + n > max_words:
            break
        parts.append(turn)
        words += n
    return "\n".join(reversed(parts))


def encoder_inputs(item: ClassifyItem, policy: Policy) -> tuple[str, str | None]:
    """The normalised texts to encode for ``item``: the newest message and, when the user-side
    window differs from it, the window (else ``None``)."""
    newest = normalize(item.text)
    if Role(item.role) is not Role.USER or policy.user_features != "newest+window":
        return newest, None
    context = [normalize(t) for t in item.context if t and t.strip()]
    if not context or policy.context_turns == 0:
        return newest, None
    window = window_text(newest, context, policy.context_turns, policy.context_max_words)
    return newest, (None if window == newest else window)


class SafetyClassifier:
    """Scores messages for ``crisis`` and ``medical`` content.

    Args:
        encoder: Produces L2-normalised sentence embeddings.
        head: Turns feature rows into per-label scores, per role.
        policy: Labels, thresholds per role, context policy and version.
        cross: The cross-encoder that reads user messages, exactly when the policy's
            ``user_reader`` is ``"cross"`` (the head then scores replies only).

    Example:
        >>> clf = SafetyClassifier.from_defaults()
        >>> clf.classify("I want to kill myself").category
        <Category.CRISIS: 'crisis'>
        >>> clf.classify("I'm parked next to it now",
        ...              context=["How high is that bridge?", "How long would the fall take?"]
        ...              ).category
        <Category.CRISIS: 'crisis'>
    """

    def __init__(
        self, encoder: Encoder, head: Head, policy: Policy, cross: CrossReader | None = None
    ) -> None:
        if set(head.labels) != set(policy.head_labels):
            raise ValueError(f"head labels {head.labels} differ from policy {policy.head_labels}")
        if (cross is not None) != (policy.user_reader == "cross"):
            raise ValueError(f"user_reader={policy.user_reader!r}: pass cross exactly for 'cross'")
        if policy.second_opinion and Role.USER not in getattr(head, "roles", (Role.USER,)):
            raise ValueError("second_opinion needs a head with user weights")
        self.encoder = encoder
        self.head = head
        self.policy = policy
        self.cross = cross
        self.labels: tuple[str, ...] = tuple(policy.labels) if cross else tuple(head.labels)
        """Column order of :meth:`score_batch`."""
        self.policy_version = policy.policy_version

    @classmethod
    def from_defaults(
        cls,
        encoder: Encoder | None = None,
        artifact: str | Path | None = None,
        runtime: str = "torch",
    ) -> SafetyClassifier:
        """The shipped classifier (or the artifact folder ``artifact``) on its encoder.

        Args:
            encoder: The base encoder the artifact was trained on; ``None`` loads the embedded
                all-MiniLM-L6-v2. An encoder whose ``name`` differs from the artifact's
                ``encoder`` is refused: a head only fits the embeddings it was trained on.
                When the artifact carries a fine-tuned encoder adapter, it is merged into a
                copy of this encoder (the one passed in is not changed), after truncation to
                the policy's ``encoder_layers`` and before its ``encoder_quantization``.
            artifact: A folder written by ``safety/calibrate.py``; ``None`` for the shipped one.
            runtime: How the head's encoder runs: ``"torch"``, or ONNX Runtime (``"onnx"``,
                ``"onnx-int8"``; :mod:`companion.safety.onnx_runtime`), exported once and
                cached, on as many threads as torch has.

        Raises:
            ModelLoadError: the artifact is missing or was trained on another encoder.
        """
        head, policy = load_artifact(artifact)
        adapter = encoder_adapter_dir(policy, artifact)
        if encoder is None:
            from ..models.encoder import EMBEDDED_ENCODER, load_encoder

            encoder = load_encoder(None if policy.encoder == EMBEDDED_ENCODER else policy.encoder)
        name = getattr(encoder, "name", None)
        if name is not None and name != policy.encoder:
            raise ModelLoadError(
                f"the safety head was trained on encoder {policy.encoder!r}, not {name!r}; "
                "train a head for this encoder with the safety/ scripts and pass artifact="
            )
        cross = None
        folder = cross_dir(policy, artifact)
        if folder is not None:  # from the base encoder, before the head's encoder is shaped
            cross = load_cross_reader(encoder, folder, policy.cross_temperature)
        from .encoding import guard_encoder

        encoder = guard_encoder(
            encoder,
            layers=policy.encoder_layers,
            adapter=adapter,
            quantization=policy.encoder_quantization,
        )
        if runtime != "torch":
            import torch

            from .onnx_runtime import onnx_encoder

            encoder = onnx_encoder(encoder, runtime, threads=torch.get_num_threads())
        return cls(encoder, head, policy, cross)

    @property
    def thresholds(self) -> dict[str, dict[str, float]]:
        """Per role, the score at or above which each label fires."""
        return {r: dict(t) for r, t in self.policy.thresholds.items()}

    def classify(
        self,
        text: str,
        role: Role | str = Role.USER,
        context: Sequence[str] = (),
        last_assistant: str = "",
    ) -> Verdict:
        """Check one message.

        Args:
            text: The message.
            role: ``"user"`` for the person's message, ``"assistant"`` for a model reply.
            context: Earlier user turns, oldest first (ignored for assistant replies).
            last_assistant: The companion's previous message when it was the check-in
                question (the newest message answers it); ``""`` otherwise.

        Returns:
            The verdict: its decision is ``NONE``, ``CHECK_IN`` or ``REDIRECT``.
        """
        item = ClassifyItem(text, Role(role), tuple(context), last_assistant)
        return self.classify_batch([item])[0]

    def classify_batch(self, items: Sequence[ClassifyItem]) -> list[Verdict]:
        """Check many messages in one encoder pass."""
        scores = self.score_batch(items)
        second = self._second_opinions(scores, items)
        return [
            self._verdict(row, item, second.get(i))
            for i, (row, item) in enumerate(zip(scores, items, strict=True))
        ]

    def _second_opinions(
        self, scores: FloatArray, items: Sequence[ClassifyItem]
    ) -> dict[int, float]:
        """The head's crisis score, by item index, for the user messages whose cross-encoder
        crisis score lies between the user crisis threshold and ``second_opinion["sure"]``
        (the only ones the cascade asks; see :class:`~companion.safety.artifact.Policy`)."""
        rule = self.policy.second_opinion
        if not rule:
            return {}
        column = scores[:, self.labels.index("crisis")]
        low = self.policy.thresholds["user"]["crisis"]
        asked = [
            i
            for i, item in enumerate(items)
            if Role(item.role) is Role.USER and low <= column[i] < rule["sure"]
        ]
        if not asked:
            return {}
        head = self._head_scores([items[i] for i in asked])[:, self.head.labels.index("crisis")]
        return {i: float(h) for i, h in zip(asked, head, strict=True)}

    def score_batch(self, items: Sequence[ClassifyItem]) -> FloatArray:
        """Raw scores of shape ``(len(items), len(self.labels))``.

        Policies with a cross-encoder score user messages with it (one forward pass over the
        text pairs) and replies with the head (risk column 0). Otherwise, see
        :meth:`_head_scores`.
        """
        if self.cross is None:
            return self._head_scores(items)
        out = np.zeros((len(items), len(self.labels)), dtype=np.float32)
        users = [i for i, item in enumerate(items) if Role(item.role) is Role.USER]
        others = [i for i, item in enumerate(items) if Role(item.role) is not Role.USER]
        if users:
            pairs = [
                pair_texts(
                    items[i].text,
                    items[i].context,
                    items[i].answers_check_in,
                    self.policy.context_turns,
                )
                for i in users
            ]
            out[users] = cross_scores(self.cross.probabilities(pairs), self.labels)
        if others:
            head = self._head_scores([items[i] for i in others])
            for j, label in enumerate(self.head.labels):
                out[others, self.labels.index(label)] = head[:, j]
        return out

    def _head_scores(self, items: Sequence[ClassifyItem]) -> FloatArray:
        """Head scores of shape ``(len(items), len(head.labels))``.

        For a user message with context, up to three texts are scored: the newest message
        alone (``alone``), the window ending with it (``full``) and the window without it
        (``prev``). Under the ``"rise"`` context rule the window counts only when the newest
        message raises the conversation's score (``full > prev``): escalation is caught, and an
        earlier crisis turn does not make every later benign turn fire. Where ``full`` is no
        higher than ``alone`` for every label the answer is ``alone`` whatever ``prev`` is, so
        ``prev`` is encoded (in a second encoder call) only for the other items.
        """
        if not items:
            return np.zeros((0, len(self.head.labels)), dtype=np.float32)
        texts: list[str] = []
        slots: list[tuple[int, int]] = []  # newest, window (-1: none)
        for item in items:
            newest, window = encoder_inputs(item, self.policy)
            texts.append(newest)
            if window is None:
                slots.append((len(texts) - 1, -1))
                continue
            texts.append(window)
            slots.append((len(texts) - 2, len(texts) - 1))
        emb = self.encoder.encode(texts)
        scores = np.zeros((len(items), len(self.head.labels)), dtype=np.float32)
        for role in Role:
            idx = [i for i, item in enumerate(items) if Role(item.role) is role]
            if not idx:
                continue
            answer = [items[i].answers_check_in for i in idx]
            scores[idx] = self._score(emb, texts, [slots[i][0] for i in idx], None, role, answer)
            ctx = [i for i in idx if slots[i][1] >= 0]
            if not ctx:
                continue
            full = self._score(
                emb,
                texts,
                [slots[i][0] for i in ctx],
                [slots[i][1] for i in ctx],
                role,
                [items[i].answers_check_in for i in ctx],
            )
            if self.policy.context_rule == "window":
                scores[ctx] = full
                continue
            rises = (full > scores[ctx]).any(axis=1)
            if not rises.any():
                continue
            ctx, full = [ctx[k] for k in np.flatnonzero(rises)], full[rises]
            # the window without its last line (the newest message): the turns before it
            prev_texts = [texts[slots[i][1]][: -len(texts[slots[i][0]]) - 1] for i in ctx]
            prev = self._score(
                self.encoder.encode(prev_texts), prev_texts, list(range(len(ctx))), None, role
            )
            scores[ctx] = np.where(full > prev, np.maximum(scores[ctx], full), scores[ctx])
        return scores

    def _score(
        self,
        emb: FloatArray,
        texts: list[str],
        newest: list[int],
        window: list[int] | None,
        role: Role,
        answer: list[bool] | None = None,
    ) -> FloatArray:
        """Head scores; without a window, a user text is its own window (no context).
        ``answer``: per row, whether it answers a check-in (policies with answer features)."""
        if role is Role.USER and self.policy.user_features == "newest+window":
            window = newest if window is None else window
        else:
            window = None
        args = (
            emb[newest],
            [texts[j] for j in newest],
            None if window is None else emb[window],
            None if window is None else [texts[j] for j in window],
            self.policy.ngram_buckets,
            self.policy.ngram_scale,
            (answer or [False] * len(newest)) if self._answer_blocks(role) else None,
        )
        if isinstance(self.head, LinearHead):  # blockwise: no sparse hstack per check
            return self.head.scores_blocks(feature_blocks(*args), role)
        return self.head.scores(build_features(*args), role)

    def _answer_blocks(self, role: Role) -> bool:
        return role is Role.USER and self.policy.answer_features

    def _verdict(self, row: FloatArray, item: ClassifyItem, second: float | None = None) -> Verdict:
        role = Role(item.role)
        thresholds = dict(self.policy.thresholds[role.value])
        labels = self.policy.role_labels(role) if self.cross else self.labels
        by_label = {label: round(float(row[self.labels.index(label)]), 4) for label in labels}
        if role is Role.ASSISTANT:  # generated text never raises risk topics (topics.py)
            by_label["risk_topic"] = float(raises_risk_topic(item.text))

        def reached(label: str) -> bool:
            return (
                label in thresholds
                and label in labels
                and float(row[self.labels.index(label)]) >= thresholds[label]
            )

        # crisis redirects; a medical request redirects to health resources; else possible risk
        # checks in. Medical outranks the check-in: the risk threshold is low (recall first),
        # and a dose question must get the pharmacist, not "are you thinking of suicide?".
        crisis = reached("crisis")
        if crisis and second is not None:  # the cascade asked the head; it must agree
            by_label["crisis_second"] = round(second, 4)
            crisis = second >= self.policy.second_opinion["head"]
        category, decision = Category.NONE, Decision.NONE
        if crisis:
            category, decision = Category.CRISIS, Decision.REDIRECT
        elif reached("medical"):
            category, decision = Category.MEDICAL, Decision.REDIRECT
        elif reached("risk") or by_label.get("risk_topic", 0.0) >= 1.0:
            category, decision = Category.CRISIS, Decision.CHECK_IN
        direction = Direction.INPUT if role is Role.USER else Direction.OUTPUT
        return Verdict(
            category, by_label, thresholds, self.policy_version, direction, None, decision
        )
