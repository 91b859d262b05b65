"""Domain value types shared by the pipeline, the stores and the service.

These are plain frozen dataclasses: the gRPC layer converts to and from them and they never
import generated protobuf code.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "Action",
    "Category",
    "Decision",
    "Direction",
    "Reply",
    "Resource",
    "Role",
    "SessionInfo",
    "StoredRequest",
    "Turn",
    "Verdict",
]


class Category(enum.StrEnum):
    """What a guard found. ``CRISIS`` outranks ``MEDICAL``."""

    NONE = "none"
    CRISIS = "crisis"
    MEDICAL = "medical"


class Action(enum.StrEnum):
    """What the pipeline did with a turn."""

    ANSWERED = "answered"
    CHECKED_IN = "checked_in"
    REDIRECTED = "redirected"


class Decision(enum.StrEnum):
    """What a guard decided for one message: the three outcomes of triage.

    ``NONE``: answer. ``CHECK_IN``: possible risk, uncertain; ask directly with the fixed
    check-in message and keep the conversation open. ``REDIRECT``: crisis or a medical-advice
    request; reply with the fixed resource message.
    """

    NONE = "none"
    CHECK_IN = "check_in"
    REDIRECT = "redirect"


class Role(enum.StrEnum):
    """Who wrote a turn."""

    USER = "user"
    ASSISTANT = "assistant"


class Direction(enum.StrEnum):
    """Which side of the turn a guard checked."""

    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one safety check, as a value (never an exception).

    Args:
        category: The winning category, ``NONE`` if no score reached its threshold. A check-in
            is ``CRISIS`` with ``decision`` ``CHECK_IN``.
        scores: Score per label (``crisis``, ``medical`` and, for three-level policies,
            ``risk``: possible risk that warrants at least a check-in), in ``[0, 1]``.
        thresholds: The threshold per category that the scores were compared with.
        policy_version: Version of the classifier artifact and policy that decided.
        direction: Whether the user's message or the model's reply was checked.
        error: Name of the exception type when the check itself failed (the pipeline then
            fails closed and treats the turn as a crisis); ``None`` otherwise.
        decision: ``NONE``, ``CHECK_IN`` or ``REDIRECT``; by default ``REDIRECT`` whenever
            ``category`` is not ``NONE`` (two-level policies).
    """

    category: Category
    scores: Mapping[str, float]
    thresholds: Mapping[str, float]
    policy_version: str
    direction: Direction = Direction.INPUT
    error: str | None = None
    decision: Decision = Decision.NONE

    def __post_init__(self) -> None:
        if self.category is Category.NONE and self.decision is not Decision.NONE:
            raise ValueError(f"decision {self.decision.value!r} needs a category")
        if self.category is not Category.NONE and self.decision is Decision.NONE:
            object.__setattr__(self, "decision", Decision.REDIRECT)
        if self.category is Category.MEDICAL and self.decision is Decision.CHECK_IN:
            raise ValueError("a check-in is for possible crisis, not medical requests")

    @property
    def fired(self) -> bool:
        """True when the turn gets a fixed message (check-in or redirect) instead of model text."""
        return self.decision is not Decision.NONE

    @property
    def redirects(self) -> bool:
        """True when the turn must be redirected to the resource message."""
        return self.decision is Decision.REDIRECT

    @classmethod
    def failed(cls, direction: Direction, error: BaseException, policy_version: str) -> Verdict:
        """A fail-closed verdict for a check that raised ``error``."""
        return cls(
            category=Category.CRISIS,
            scores={},
            thresholds={},
            policy_version=policy_version,
            direction=direction,
            error=type(error).__name__,
            decision=Decision.REDIRECT,
        )


@dataclass(frozen=True)
class Resource:
    """One support service from the resource catalogue.

    Args:
        name: Service name, e.g. "Samaritans".
        description: One line on what it offers.
        phone: Number to call, if any.
        sms: How to text, if any.
        url: Web address, if any.
        hours: Opening hours, e.g. "24/7".
        source: Where the entry was checked.
    """

    name: str
    description: str = ""
    phone: str | None = None
    sms: str | None = None
    url: str | None = None
    hours: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Turn:
    """One stored message of a conversation.

    Args:
        role: ``USER`` or ``ASSISTANT``.
        text: The message text (stored server-side only; never logged).
        timestamp: Seconds since the epoch (UTC).
        category: The guard verdict's category for this exchange.
        action: What the pipeline did.
        scores: The guard scores behind ``category``.
        index: Position in the session, starting at 0; set by the store.
    """

    role: Role
    text: str
    timestamp: float
    category: Category = Category.NONE
    action: Action = Action.ANSWERED
    scores: Mapping[str, float] = field(default_factory=dict)
    index: int = -1


@dataclass(frozen=True)
class StoredRequest:
    """The turns a session store holds under one client request id (an idempotency key).

    Args:
        request_id: The client's id of the request.
        turns: The turns appended with it, in order (the user turn, then the assistant turn).
        outcome: What the pipeline recorded to replay the reply (opaque JSON, no text).
    """

    request_id: str
    turns: tuple[Turn, ...]
    outcome: str = ""


@dataclass(frozen=True)
class SessionInfo:
    """A conversation's metadata.

    Args:
        id: Unguessable id (128 random bits, URL-safe base64).
        locale: BCP-47 tag such as "en-GB"; picks the resource region and template language.
        created_at: Seconds since the epoch (UTC).
        owner: Opaque owner key (the service binds sessions to an API key); ``""`` for none.
        metadata: Client-supplied string pairs.
    """

    id: str
    locale: str
    created_at: float
    owner: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """The answer to one user message.

    Args:
        text: What the user should see: generated text or a fixed resource message.
        category: ``"none"``, ``"crisis"`` or ``"medical"`` (a check-in is ``"crisis"``).
        action: ``"answered"``, ``"checked_in"`` (the fixed check-in question) or
            ``"redirected"`` (the fixed resource message).
        resources: The services listed in a redirect or check-in (empty when answered).
        input_verdict: The check of the user's message.
        output_verdict: The check of the model's reply (``None`` when generation was skipped).
        turn_index: Index of the assistant turn in the session.
    """

    text: str
    category: Category
    action: Action
    resources: tuple[Resource, ...] = ()
    input_verdict: Verdict | None = None
    output_verdict: Verdict | None = None
    turn_index: int = -1

    @property
    def verdict(self) -> Verdict | None:
        """The verdict that decided the action (output check if it fired, else input check)."""
        if self.output_verdict is not None and (
            self.output_verdict.fired or self.input_verdict is None or not self.input_verdict.fired
        ):
            return self.output_verdict
        return self.input_verdict
