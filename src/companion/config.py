"""Configuration as frozen, validated dataclasses.

Values come from code or from the entry points (CLI, server settings); the library itself never
reads environment variables except :func:`cache_dir` and :func:`data_dir`, which callers may
override by argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GenerationConfig", "PipelineConfig", "cache_dir", "data_dir"]


def _check(cond: bool, name: str, value: object, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name}={value!r}: {rule}")


@dataclass(frozen=True)
class GenerationConfig:
    """How the model writes a reply.

    Args:
        max_new_tokens: Upper bound on reply length in tokens.
        do_sample: Sample (True) or decode greedily (False, reproducible).
        temperature: Sampling temperature, used when ``do_sample``.
        top_p: Nucleus sampling mass, used when ``do_sample``.
        repetition_penalty: >1 discourages loops, which small models fall into.
        seed: Seed for sampling; ``None`` leaves the generator unseeded.
    """

    # The defaults were chosen on validation by training/choose_decoding.py's fixed rule for the
    # shipped adapter (MODEL_CARD.md, "Decoding").
    max_new_tokens: int = field(default=120, metadata={"help": "reply length cap in tokens"})
    do_sample: bool = True
    temperature: float = 0.5
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(1 <= self.max_new_tokens <= 4096, "max_new_tokens", self.max_new_tokens, "1..4096")
        _check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        _check(
            self.repetition_penalty >= 1.0,
            "repetition_penalty",
            self.repetition_penalty,
            "must be >= 1",
        )


@dataclass(frozen=True)
class PipelineConfig:
    """Limits and context policy of the guarded turn.

    Args:
        max_message_chars: Longer user messages are rejected with ``InvalidArgument``.
        context_tokens: Token budget for prompt plus reply; ``None`` uses the model's window.
        guard_context_turns: How many earlier user turns the input guard sees with the newest.
        check_in_quiet_turns: After a check-in answered with a clear no, this many further
            turns get no new check-in unless the risk score rises above the one that asked
            (a redirect is never held back).
        release_min_clause_chars: Streaming releases a unit at a clause boundary (``,;:``)
            once this many characters are held; sentences are released whole.
        release_max_chars: Held text that reaches this length with no boundary is checked
            and released (the token budget of a unit, about 60 tokens).
        guard_timeout_seconds: A safety check that takes longer fails closed (the fixed
            resource message); ``None`` runs checks without a time limit.
        generation_timeout_seconds: A reply the model has not finished by then is abandoned:
            the turn raises ``Unavailable`` and stores nothing; ``None``: no time limit.
        max_session_age_seconds: A session older than this (from its creation) is gone:
            ``SessionNotFound``, and :meth:`Companion.purge_expired` erases it; ``None``:
            sessions never expire.
        max_turns_per_session: Stored turns a session may hold (a user message and its reply
            are two); a turn past it raises ``FailedPrecondition``; ``None``: no limit.
        max_sessions_per_owner: Sessions one owner (API key) may hold; the next raises
            ``ResourceExhausted``; ``None``: no limit.
        generation: Decoding settings.
    """

    max_message_chars: int = 4000
    context_tokens: int | None = None
    guard_context_turns: int = 3
    check_in_quiet_turns: int = 3
    release_min_clause_chars: int = 48
    release_max_chars: int = 240
    guard_timeout_seconds: float | None = 10.0
    generation_timeout_seconds: float | None = 120.0
    max_session_age_seconds: float | None = None
    max_turns_per_session: int | None = None
    max_sessions_per_owner: int | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        _check(self.max_message_chars >= 1, "max_message_chars", self.max_message_chars, ">= 1")
        _check(
            self.context_tokens is None or self.context_tokens >= 64,
            "context_tokens",
            self.context_tokens,
            ">= 64 or None",
        )
        _check(
            0 <= self.guard_context_turns <= 20,
            "guard_context_turns",
            self.guard_context_turns,
            "0..20",
        )
        _check(
            0 <= self.check_in_quiet_turns <= 50,
            "check_in_quiet_turns",
            self.check_in_quiet_turns,
            "0..50",
        )
        _check(
            1 <= self.release_min_clause_chars <= self.release_max_chars <= 4000,
            "release_min_clause_chars",
            (self.release_min_clause_chars, self.release_max_chars),
            "1 <= release_min_clause_chars <= release_max_chars <= 4000",
        )
        for name in ("guard_timeout_seconds", "generation_timeout_seconds"):
            value = getattr(self, name)
            _check(value is None or value > 0, name, value, "> 0 seconds or None")
        age = self.max_session_age_seconds
        _check(age is None or age > 0, "max_session_age_seconds", age, "> 0 seconds or None")
        turns = self.max_turns_per_session
        _check(turns is None or turns >= 2, "max_turns_per_session", turns, ">= 2 or None")
        owned = self.max_sessions_per_owner
        _check(owned is None or owned >= 1, "max_sessions_per_owner", owned, ">= 1 or None")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where converted model weights are cached: ``override``, ``$COMPANION_CACHE_DIR`` or
    ``~/.cache/companion``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("COMPANION_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "companion"


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where the SQLite session file lives by default: ``override``, ``$COMPANION_DATA_DIR`` or
    the platform's user data dir."""
    if override is not None:
        return Path(override)
    env = os.environ.get("COMPANION_DATA_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("companion", appauthor=False))
