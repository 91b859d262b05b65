"""The pipeline's two calls out, each within its time limit (``_timeouts``): the guard's check,
which fails closed, and the model's reply, which fails as ``Unavailable``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ._logging import get_logger
from ._timeouts import Stuck, call_within, stream_within
from .config import GenerationConfig
from .errors import Cancelled, GenerationTimeout, GuardTimeout, Unavailable
from .protocols import ChatMessage, Generator, SafetyGuard, ShouldStop
from .types import Direction, Role, Verdict

__all__ = ["checked", "generated"]

log = get_logger("companion.pipeline")


def checked(
    guard: SafetyGuard,
    stuck: Stuck,
    limit: float | None,
    text: str,
    role: Role,
    context: Sequence[str],
    last_assistant: str = "",
) -> Verdict:
    """``guard``'s verdict on ``text`` within ``limit`` seconds; a failed verdict (the
    fallback resource message) when the guard raises or takes longer: a broken or hung guard
    never lets text through."""
    direction = Direction.INPUT if role is Role.USER else Direction.OUTPUT
    try:
        return call_within(
            lambda: guard.classify(text, role, context, last_assistant),
            limit,
            stuck,
            lambda: GuardTimeout(f"the safety check took longer than {limit} s"),
            "companion-guard",
        )
    except Exception as exc:
        reason = "timeout" if isinstance(exc, GuardTimeout) else "error"
        error = type(exc).__name__
        log.error("guard_failed", direction=direction.value, error=error, reason=reason)
        return Verdict.failed(direction, exc, getattr(guard, "policy_version", "unknown"))


def generated(
    generator: Generator,
    generation: GenerationConfig,
    stuck: Stuck,
    limit: float | None,
    messages: list[ChatMessage],
    stop: ShouldStop,
    session_id: str,
) -> Iterator[str]:
    """The model's deltas, within ``limit`` seconds.

    Raises:
        Cancelled: the model raised it.
        Unavailable: the model failed or timed out.
    """
    try:
        yield from stream_within(
            lambda halt: generator.stream(messages, generation, halt),
            limit,
            stuck,
            stop,
            lambda: GenerationTimeout(f"the model did not finish the reply within {limit} s"),
        )
    except Cancelled:
        raise
    except Exception as exc:
        reason = "timeout" if isinstance(exc, GenerationTimeout) else "error"
        log.error(
            "generation_failed", session_id=session_id, error=type(exc).__name__, reason=reason
        )
        raise Unavailable(
            f"the model {'timed out' if reason == 'timeout' else 'failed'}; retry",
            component="generator",
            reason=reason,
        ) from exc
