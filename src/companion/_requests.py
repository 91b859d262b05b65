"""Idempotent turns: client request ids, and the stored record that replays a reply.

A caller may name a turn with a request id (an idempotency key). The session store keeps the id
with the turn pair, and with it an *outcome*: what the reply carried besides its text (the
resources listed and both verdicts), as JSON with no message or reply text in it. A retry with
the same id gets the stored reply, rebuilt from the stored assistant turn and the outcome,
instead of a second turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import FailedPrecondition, InvalidArgument
from .types import (
    Category,
    Decision,
    Direction,
    Reply,
    Resource,
    StoredRequest,
    Verdict,
)

__all__ = [
    "MAX_REQUEST_ID_CHARS",
    "is_valid_request_id",
    "outcome_json",
    "reply_from_stored",
    "validate_request_id",
    "validate_text",
]

MAX_REQUEST_ID_CHARS = 64
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}")
_OUTCOME_VERSION = 1


def is_valid_request_id(request_id: object) -> bool:
    """True for 1 to 64 ASCII letters, digits, ``-``, ``_``, ``.`` or ``:`` (a UUID fits)."""
    return isinstance(request_id, str) and bool(_REQUEST_ID.fullmatch(request_id))


def validate_text(text: object, max_chars: int) -> None:
    """Raise InvalidArgument unless ``text`` is a non-blank string of at most ``max_chars``
    characters (the message is never quoted)."""
    if not isinstance(text, str):
        raise InvalidArgument("text must be a string")
    if not text.strip():
        raise InvalidArgument("text is empty")
    if len(text) > max_chars:
        raise InvalidArgument(f"text has {len(text)} characters; the limit is {max_chars}")


def validate_request_id(request_id: object) -> str:
    """``request_id`` when valid.

    Raises:
        InvalidArgument: not a string of 1 to 64 allowed ASCII characters (the message states
            the rule, never the value).
    """
    if not is_valid_request_id(request_id):
        raise InvalidArgument(
            f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} ASCII letters, digits,"
            " '-', '_', '.' or ':'"
        )
    return str(request_id)


def outcome_json(reply: Reply) -> str:
    """What a stored turn pair needs, besides its texts, to replay ``reply`` (no text in it)."""
    return json.dumps(
        {
            "v": _OUTCOME_VERSION,
            "resources": [_resource_dict(r) for r in reply.resources],
            "input": _verdict_dict(reply.input_verdict),
            "output": _verdict_dict(reply.output_verdict),
        },
        ensure_ascii=False,
        sort_keys=True,
    )


def reply_from_stored(stored: StoredRequest, text: str) -> Reply:
    """The reply a stored request gave, for a retry that sends ``text``.

    Raises:
        FailedPrecondition: the request id was used for another message in this session.
    """
    user, assistant = stored.turns[0], stored.turns[-1]
    if user.text != text:
        raise FailedPrecondition(
            "request_id was already used for a different message in this session;"
            " a new message needs a new request_id"
        )
    data: Mapping[str, Any] = json.loads(stored.outcome) if stored.outcome else {}
    return Reply(
        text=assistant.text,
        category=assistant.category,
        action=assistant.action,
        resources=tuple(Resource(**r) for r in data.get("resources", ())),
        input_verdict=_verdict(data.get("input")),
        output_verdict=_verdict(data.get("output")),
        turn_index=assistant.index,
    )


def _resource_dict(r: Resource) -> dict[str, Any]:
    return {
        "name": r.name,
        "description": r.description,
        "phone": r.phone,
        "sms": r.sms,
        "url": r.url,
        "hours": r.hours,
        "source": r.source,
    }


def _verdict_dict(v: Verdict | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {
        "category": v.category.value,
        "scores": dict(v.scores),
        "thresholds": dict(v.thresholds),
        "policy_version": v.policy_version,
        "direction": v.direction.value,
        "error": v.error,
        "decision": v.decision.value,
    }


def _verdict(d: Mapping[str, Any] | None) -> Verdict | None:
    if d is None:
        return None
    return Verdict(
        category=Category(d["category"]),
        scores=dict(d["scores"]),
        thresholds=dict(d["thresholds"]),
        policy_version=d["policy_version"],
        direction=Direction(d["direction"]),
        error=d["error"],
        decision=Decision(d["decision"]),
    )
