"""The public facade: :class:`Companion` and :class:`Session`."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import PipelineConfig
from .errors import InvalidArgument, SessionNotFound
from .models.lm import SHIPPED_ADAPTER
from .pipeline import Pipeline, StreamEvent
from .protocols import Generator, SafetyGuard, SessionStore, ShouldStop
from .resources import ResourceCatalogue, validate_locale
from .sessions import InMemorySessionStore, RedisSessionStore, SQLiteSessionStore, new_session_id
from .types import Reply, SessionInfo, Turn

__all__ = ["Companion", "Session"]

_MAX_METADATA = 16


@dataclass(frozen=True)
class Session:
    """A handle on one conversation; cheap to create, holds no state of its own.

    Attributes:
        id: The session id.
        locale: Its language tag.
    """

    companion: Companion = field(repr=False)
    info: SessionInfo

    @property
    def id(self) -> str:
        """The session id."""
        return self.info.id

    @property
    def locale(self) -> str:
        """The session's language tag."""
        return self.info.locale

    def send(
        self, text: str, should_stop: ShouldStop | None = None, *, request_id: str | None = None
    ) -> Reply:
        """Send a user message and get the guarded reply (see :meth:`Companion.send`)."""
        return self.companion.send(self.id, text, should_stop, request_id=request_id)

    def stream(
        self, text: str, should_stop: ShouldStop | None = None, *, request_id: str | None = None
    ) -> Iterator[StreamEvent]:
        """Send a user message and stream the reply as events."""
        return self.companion.stream(self.id, text, should_stop, request_id=request_id)

    def stored_reply(self, text: str, request_id: str | None = None) -> Reply | None:
        """See :meth:`Companion.stored_reply`."""
        return self.companion.stored_reply(self.id, text, request_id)

    def history(self, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """The stored turns."""
        return self.companion.history(self.id, offset, limit)


class Companion:
    """A guarded wellness companion: sessions plus the safety pipeline.

    Args:
        guard: Safety classifier for both directions.
        generator: The chat model.
        store: Session storage.
        catalogue: Resource messages; the shipped catalogue by default.
        config: Limits and decoding settings.

    Example:
        >>> c = Companion.from_defaults(session_store="memory")
        >>> s = c.start_session(locale="en-GB")
        >>> r = s.send("I feel anxious about my exams")
        >>> r.category, r.action
    """

    def __init__(
        self,
        guard: SafetyGuard,
        generator: Generator,
        store: SessionStore,
        catalogue: ResourceCatalogue | None = None,
        config: PipelineConfig | None = None,
    ) -> None:
        self.pipeline = Pipeline(
            guard, generator, store, catalogue or ResourceCatalogue.load(), config
        )

    @classmethod
    def from_defaults(
        cls,
        session_store: Literal["sqlite", "memory", "redis"] | SessionStore = "sqlite",
        *,
        model: str | os.PathLike[str] | None = None,
        adapter: str | os.PathLike[str] | None = SHIPPED_ADAPTER,
        merge_adapter: bool = True,
        encoder: str | os.PathLike[str] | None = None,
        db_path: str | os.PathLike[str] | None = None,
        redis_url: str | None = None,
        config: PipelineConfig | None = None,
        device: str | None = None,
        generator: Generator | None = None,
        batch_size: int = 1,
        guard_runtime: str = "torch",
        static_cache: bool = False,
        dtype: Literal["auto", "float32", "bfloat16"] = "auto",
    ) -> Companion:
        """Build a companion on the embedded models (or the ones named).

        Args:
            session_store: ``"sqlite"`` (default file under the user data dir, or ``db_path``),
                ``"memory"``, ``"redis"`` (at ``redis_url``, with
                :class:`~companion.sessions.RedisSessionStore`'s default TTL and timeouts;
                build the store yourself to choose them), or any
                :class:`~companion.protocols.SessionStore`.
            model: Base model: ``None`` for the embedded SmolLM2-135M-Instruct, a local
                directory or a Hugging Face id in the local cache.
            adapter: A PEFT adapter directory to apply to the base model. The default,
                ``"shipped"``, applies the companion adapter shipped in the package when the
                base is the embedded model (see MODEL_CARD.md); ``None`` uses the bare base.
            merge_adapter: Merge the adapter into the weights for faster inference.
            encoder: Sentence encoder for the safety classifier: ``None`` for the embedded
                all-MiniLM-L6-v2, or any sentence-transformers path / id.
            db_path: SQLite file when ``session_store="sqlite"``.
            redis_url: Redis URL when ``session_store="redis"``; default
                ``redis://127.0.0.1:6379/0``.
            config: Limits and decoding settings.
            device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when available.
            generator: A generator to answer with instead of the local model, e.g. a
                :class:`~companion.models.OpenAIChatGenerator`; the local model is then not
                loaded (``model``, ``adapter``, ``merge_adapter`` and ``device`` go unused),
                the guard still is.
            batch_size: Turns the local model generates at once: concurrent turns share
                its decoding steps, a new one joining at the next step
                (:class:`~companion.models.BatchedGenerator`); 1, one at a time
                (:class:`~companion.models.HFGenerator`).
            static_cache: With ``batch_size=1``, decode with a static key/value cache, which
                transformers compiles with ``torch.compile`` on a CUDA device (see
                :class:`~companion.models.HFGenerator`).
            dtype: The local model's weights: ``"auto"`` (bf16 on CUDA, fp32 on a CPU),
                ``"float32"`` or ``"bfloat16"``. On a CPU with AVX-512 BF16, bf16 makes a batched
                decoding step of 8 rows cost about what one row costs (fp32: about 2x), at the
                price of replies that differ from fp32's where bf16 rounding flips a near-tie
                (docs/benchmarks.md).
            guard_runtime: The guard encoder's runtime: ``"torch"``, or ONNX Runtime
                (``"onnx"``, ``"onnx-int8"``; needs ``companion[onnx]``), see
                :meth:`~companion.safety.SafetyClassifier.from_defaults`.

        Raises:
            ModelLoadError: a model, adapter or package is missing.
            ValueError: ``static_cache`` with ``batch_size`` above 1.
        """
        from .models import BatchedGenerator, HFGenerator, load_causal_lm, load_encoder
        from .safety import SafetyClassifier

        if static_cache and batch_size > 1:
            raise ValueError("static_cache needs batch_size=1: batched rows join a growing cache")
        store = _make_store(session_store, db_path, redis_url)
        guard = SafetyClassifier.from_defaults(load_encoder(encoder), runtime=guard_runtime)
        if generator is None:
            lm, tokenizer = load_causal_lm(
                model, adapter, merge_adapter=merge_adapter, dtype=dtype, device=device
            )
            generator = (
                HFGenerator(lm, tokenizer, static_cache=static_cache)
                if batch_size == 1
                else BatchedGenerator(lm, tokenizer, max_batch=batch_size)
            )
        return cls(guard, generator, store, config=config)

    @property
    def store(self) -> SessionStore:
        """The session store."""
        return self.pipeline.store

    def start_session(
        self, locale: str = "en-US", metadata: Mapping[str, str] | None = None, owner: str = ""
    ) -> Session:
        """Open a new conversation.

        Args:
            locale: Language tag; its region picks the resource services (e.g. ``"en-GB"``);
                at most 35 ASCII letters, digits, ``-`` or ``_``.
            metadata: Up to 16 client string pairs kept with the session (keys at most 64
                characters, values at most 256).
            owner: Opaque owner key; the service binds sessions to API keys with it.

        Raises:
            InvalidArgument: bad locale or metadata.
            ResourceExhausted: the owner holds ``max_sessions_per_owner`` sessions already.
        """
        validate_locale(locale)
        meta = dict(metadata or {})
        if len(meta) > _MAX_METADATA or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
            for k, v in meta.items()
        ):
            raise InvalidArgument(
                "metadata must be at most 16 string pairs (keys <= 64, values <= 256 chars)"
            )
        info = SessionInfo(new_session_id(), locale, self.pipeline.clock(), owner, meta)
        self.store.create(info, max_per_owner=self.pipeline.config.max_sessions_per_owner)
        return Session(self, info)

    def session(self, session_id: str, owner: str | None = None) -> Session:
        """A handle on an existing session.

        Args:
            session_id: The id from :meth:`start_session`.
            owner: When given, a session that belongs to another owner is reported as not
                found, exactly like a missing one (the service uses this per API key).

        Raises:
            InvalidArgument: malformed id.
            SessionNotFound: no such session, or another owner's.
        """
        info = self.pipeline.session(session_id)
        if owner is not None and not hmac.compare_digest(info.owner.encode(), owner.encode()):
            raise SessionNotFound(f"session {session_id} not found")
        return Session(self, info)

    def send(
        self,
        session_id: str,
        text: str,
        should_stop: ShouldStop | None = None,
        *,
        request_id: str | None = None,
    ) -> Reply:
        """Run one guarded turn; see :meth:`companion.pipeline.Pipeline.stream` for errors.

        Args:
            session_id: The session.
            text: The person's message.
            should_stop: Polled during generation; true stops the turn (nothing stored).
            request_id: Optional idempotency key (1-64 ASCII letters, digits, ``-_.:``): a
                retry with the same id and text returns the stored reply instead of a second
                turn; the same id with another text raises ``FailedPrecondition``.
        """
        return self.pipeline.turn(session_id, text, should_stop, request_id)

    def stream(
        self,
        session_id: str,
        text: str,
        should_stop: ShouldStop | None = None,
        *,
        request_id: str | None = None,
    ) -> Iterator[StreamEvent]:
        """Run one guarded turn, yielding checked ``TextDelta`` units, maybe ``Withheld``, and a
        final ``TurnDone`` (see :meth:`Pipeline.stream`; ``request_id`` as in :meth:`send`)."""
        return self.pipeline.stream(session_id, text, should_stop, request_id)

    def stored_reply(
        self, session_id: str, text: str, request_id: str | None = None
    ) -> Reply | None:
        """Check a turn's request as :meth:`send` would, without running it; the reply stored
        under ``request_id``, or ``None`` (see :meth:`Pipeline.stored_reply`)."""
        return self.pipeline.stored_reply(session_id, text, request_id)

    def history(self, session_id: str, offset: int = 0, limit: int | None = None) -> list[Turn]:
        """The stored turns of a session, oldest first."""
        self.pipeline.session(session_id)
        if offset < 0 or (limit is not None and limit < 0):
            raise InvalidArgument("offset and limit must be >= 0")
        return self.store.history(session_id, offset, limit)

    def delete_session(self, session_id: str) -> bool:
        """Erase a session and all its turns; False if it did not exist."""
        self.pipeline.session(session_id)
        return self.store.delete(session_id)

    def purge_expired(self) -> int:
        """Erase the sessions older than ``PipelineConfig.max_session_age_seconds`` (counted
        from their creation) with all their turns, as thoroughly as :meth:`delete_session`;
        returns how many. Call it now and then (``companion serve`` does, every
        ``purge_interval_seconds``); until then an expired session is already not found."""
        return self.pipeline.purge_expired()

    def close(self) -> None:
        """Close the session store."""
        self.store.close()

    def __enter__(self) -> Companion:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _make_store(
    kind: str | SessionStore,
    db_path: str | os.PathLike[str] | None,
    redis_url: str | None = None,
) -> SessionStore:
    if kind == "memory":
        return InMemorySessionStore()
    if kind == "sqlite":
        return SQLiteSessionStore(Path(db_path) if db_path is not None else None)
    if kind == "redis":
        return RedisSessionStore(redis_url) if redis_url else RedisSessionStore()
    if isinstance(kind, str):
        raise InvalidArgument(
            f"session_store must be 'sqlite', 'memory', 'redis' or a SessionStore, not {kind!r}"
        )
    return kind
