"""Conversions between the domain types and the generated protobuf messages.

The one place that knows both sides: the servicer converts replies to messages with it and the
client converts them back. Domain modules never import this.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from ._proto.companion.v1 import companion_pb2 as pb
from .types import Action, Category, Decision, Direction, Reply, Resource, Role, Turn, Verdict

__all__ = [
    "category_from_pb",
    "category_to_pb",
    "reply_from_pb",
    "reply_to_pb",
    "turn_from_pb",
    "turn_to_pb",
]

_CATEGORY = {
    Category.NONE: pb.CATEGORY_NONE,
    Category.CRISIS: pb.CATEGORY_CRISIS,
    Category.MEDICAL: pb.CATEGORY_MEDICAL,
}
_ACTION = {
    Action.ANSWERED: pb.ACTION_ANSWERED,
    Action.CHECKED_IN: pb.ACTION_CHECKED_IN,
    Action.REDIRECTED: pb.ACTION_REDIRECTED,
}
_DECISION = {
    Decision.NONE: pb.DECISION_NONE,
    Decision.CHECK_IN: pb.DECISION_CHECK_IN,
    Decision.REDIRECT: pb.DECISION_REDIRECT,
}
_DIRECTION = {Direction.INPUT: pb.DIRECTION_INPUT, Direction.OUTPUT: pb.DIRECTION_OUTPUT}
_ROLE = {Role.USER: pb.ROLE_USER, Role.ASSISTANT: pb.ROLE_ASSISTANT}


_CATEGORY_IN: dict[int, Category] = {v: k for k, v in _CATEGORY.items()}
_ACTION_IN: dict[int, Action] = {v: k for k, v in _ACTION.items()}
_DECISION_IN: dict[int, Decision] = {v: k for k, v in _DECISION.items()}
_DIRECTION_IN: dict[int, Direction] = {v: k for k, v in _DIRECTION.items()}
_ROLE_IN: dict[int, Role] = {v: k for k, v in _ROLE.items()}


def category_to_pb(category: Category) -> pb.Category:
    """The wire enum of ``category``."""
    return _CATEGORY[category]


def category_from_pb(value: int) -> Category:
    """The domain category of a wire enum value (unknown values read as ``NONE``)."""
    return Category(_CATEGORY_IN.get(value, Category.NONE))


def verdict_to_pb(v: Verdict) -> pb.Verdict:
    """A domain verdict as a message."""
    return pb.Verdict(
        category=_CATEGORY[v.category],
        scores=dict(v.scores),
        thresholds=dict(v.thresholds),
        policy_version=v.policy_version,
        direction=_DIRECTION[v.direction],
        check_failed=v.error is not None,
        decision=_DECISION[v.decision],
    )


def verdict_from_pb(m: pb.Verdict) -> Verdict:
    """A verdict message as a domain verdict."""
    category = Category(_CATEGORY_IN.get(m.category, Category.NONE))
    # an older server sends no decision: its verdicts that fired were redirects
    decision = _DECISION_IN.get(m.decision, Decision.NONE)
    return Verdict(
        category=category,
        scores=dict(m.scores),
        thresholds=dict(m.thresholds),
        policy_version=m.policy_version,
        direction=Direction(_DIRECTION_IN.get(m.direction, Direction.INPUT)),
        error="check_failed" if m.check_failed else None,
        decision=Decision.NONE if category is Category.NONE else decision,
    )


def resource_to_pb(r: Resource) -> pb.Resource:
    """A support service as a message (``None`` fields become empty strings)."""
    return pb.Resource(
        name=r.name,
        description=r.description,
        phone=r.phone or "",
        sms=r.sms or "",
        url=r.url or "",
        hours=r.hours or "",
        source=r.source,
    )


def resource_from_pb(m: pb.Resource) -> Resource:
    """A resource message as a domain value (empty strings become ``None``)."""
    return Resource(
        name=m.name,
        description=m.description,
        phone=m.phone or None,
        sms=m.sms or None,
        url=m.url or None,
        hours=m.hours or None,
        source=m.source,
    )


def reply_to_pb(r: Reply) -> pb.SendMessageResponse:
    """A reply as the SendMessage response."""
    msg = pb.SendMessageResponse(
        text=r.text,
        category=_CATEGORY[r.category],
        action=_ACTION[r.action],
        resources=[resource_to_pb(x) for x in r.resources],
        turn_index=r.turn_index,
    )
    if r.verdict is not None:
        msg.verdict.CopyFrom(verdict_to_pb(r.verdict))
    if r.input_verdict is not None:
        msg.input_verdict.CopyFrom(verdict_to_pb(r.input_verdict))
    if r.output_verdict is not None:
        msg.output_verdict.CopyFrom(verdict_to_pb(r.output_verdict))
    return msg


def reply_from_pb(m: pb.SendMessageResponse) -> Reply:
    """A SendMessage response as a domain reply."""
    return Reply(
        text=m.text,
        category=Category(_CATEGORY_IN.get(m.category, Category.NONE)),
        action=Action(_ACTION_IN.get(m.action, Action.ANSWERED)),
        resources=tuple(resource_from_pb(x) for x in m.resources),
        input_verdict=verdict_from_pb(m.input_verdict) if m.HasField("input_verdict") else None,
        output_verdict=verdict_from_pb(m.output_verdict) if m.HasField("output_verdict") else None,
        turn_index=m.turn_index,
    )


def turn_to_pb(t: Turn) -> pb.Turn:
    """A stored turn as a message."""
    ts = Timestamp()
    ts.FromNanoseconds(int(t.timestamp * 1e9))
    return pb.Turn(
        role=_ROLE[t.role],
        text=t.text,
        create_time=ts,
        category=_CATEGORY[t.category],
        action=_ACTION[t.action],
        scores=dict(t.scores),
        index=t.index,
    )


def turn_from_pb(m: pb.Turn) -> Turn:
    """A turn message as a domain turn."""
    return Turn(
        role=Role(_ROLE_IN.get(m.role, Role.USER)),
        text=m.text,
        timestamp=m.create_time.ToNanoseconds() / 1e9,
        category=Category(_CATEGORY_IN.get(m.category, Category.NONE)),
        action=Action(_ACTION_IN.get(m.action, Action.ANSWERED)),
        scores=dict(m.scores),
        index=m.index,
    )
