"""The guarded turn: input guard -> context assembly -> generation -> output guard -> store.

Pure orchestration: every collaborator is passed in, and nothing here touches gRPC, the
environment or files. The pipeline FAILS CLOSED: when a guard raises or takes longer than
``guard_timeout_seconds``, the user gets the fixed resource message, never unchecked generated
text; a model that fails or takes longer than ``generation_timeout_seconds`` gives
``Unavailable``, and nothing of the turn is stored.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

from ._events import StreamEvent, TextDelta, TurnDone, Withheld, replay_events
from ._guarded import checked, generated
from ._history import (
    FIRST_READ,
    checks_need,
    fits_window,
    read_for_model,
    session_is_full,
    window_bound,
)
from ._logging import get_logger
from ._release import ReleaseBuffer, release_checked
from ._requests import outcome_json, reply_from_stored, validate_request_id, validate_text
from ._serial import append_turn, kept_while, lock_turn
from ._timeouts import Stuck
from ._triage import apply_triage, model_history, triage_state
from .config import PipelineConfig
from .context import build_messages
from .errors import (
    Cancelled,
    DuplicateRequest,
    InvalidArgument,
    SessionNotFound,
)
from .prompts import SYSTEM_PROMPT
from .protocols import ChatMessage, Generator, SafetyGuard, SessionStore, ShouldStop, TurnLock
from .resources import ResourceCatalogue
from .sessions import is_valid_session_id
from .sessions._limits import session_full
from .types import (
    Action,
    Category,
    Decision,
    Reply,
    Resource,
    Role,
    SessionInfo,
    Turn,
    Verdict,
)

__all__ = ["Pipeline", "StreamEvent", "TextDelta", "TurnDone", "Withheld", "replay_events"]

log = get_logger(__name__)


class Pipeline:
    """Runs guarded turns against a session store.

    Args:
        guard: Safety classifier for user messages and replies.
        generator: The chat model.
        store: Where sessions and turns live.
        catalogue: Fixed resource messages by locale.
        config: Limits, context policy and decoding settings.
        system_prompt: The persona; the training pipeline uses the same one.
        clock: Seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        guard: SafetyGuard,
        generator: Generator,
        store: SessionStore,
        catalogue: ResourceCatalogue,
        config: PipelineConfig | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.guard = guard
        self.generator = generator
        self.store = store
        self.catalogue = catalogue
        self.config = config or PipelineConfig()
        self.system_prompt = system_prompt
        self.clock = clock
        # Checks and generations that outlived their time limit (``_timeouts``).
        self._stuck_guard = Stuck()
        self._stuck_model = Stuck()
        self._bounds: dict[tuple[int, int, str], int] = {}

    def session(self, session_id: str) -> SessionInfo:
        """The session's metadata.

        Raises:
            InvalidArgument: the id is malformed.
            SessionNotFound: no such session, or one older than ``max_session_age_seconds``:
                that one is erased now, if :meth:`purge_expired` has not erased it yet.
        """
        if not isinstance(session_id, str) or not is_valid_session_id(session_id):
            raise InvalidArgument("session_id is malformed")
        info = self.store.get(session_id)
        age = self.config.max_session_age_seconds
        if info is not None and age is not None and info.created_at < self.clock() - age:
            self.store.delete(session_id)  # expired: gone for good, not only hidden
            info = None
        if info is None:
            raise SessionNotFound(f"session {session_id} not found")
        return info

    def purge_expired(self) -> int:
        """Erase every session older than ``max_session_age_seconds`` with all its turns, as
        thoroughly as a delete; returns how many (0 when sessions never expire)."""
        age = self.config.max_session_age_seconds
        return 0 if age is None else self.store.purge_expired(self.clock() - age)

    def stored_reply(
        self, session_id: str, text: str, request_id: str | None = None
    ) -> Reply | None:
        """Check a turn's request as :meth:`stream` would, without running it; returns the
        reply stored under ``request_id``, or ``None`` (always ``None`` without an id).

        Raises:
            InvalidArgument: bad message, session id or request id.
            SessionNotFound: no such session.
            FailedPrecondition: ``request_id`` names a turn with another message.
        """
        return self._prepare(session_id, text, request_id)[1]

    def _prepare(
        self, session_id: str, text: str, request_id: str | None
    ) -> tuple[SessionInfo, Reply | None]:
        info = self.session(session_id)
        validate_text(text, self.config.max_message_chars)
        if request_id is None:
            return info, None
        found = self.store.find_request(session_id, validate_request_id(request_id))
        return info, reply_from_stored(found, text) if found is not None else None

    def turn(
        self,
        session_id: str,
        text: str,
        should_stop: ShouldStop | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """Run one turn and return the stored reply (see :meth:`stream`)."""
        for event in self.stream(session_id, text, should_stop, request_id):
            if isinstance(event, TurnDone):
                return event.reply
        raise AssertionError("stream() ended without TurnDone")  # pragma: no cover

    def stream(
        self,
        session_id: str,
        text: str,
        should_stop: ShouldStop | None = None,
        request_id: str | None = None,
    ) -> Iterator[StreamEvent]:
        """Run one turn, yielding checked units of the reply and a final :class:`TurnDone`.

        Check before release: generated text is held until a unit is complete
        (``companion._release``), the output guard reads the reply so far with it, and only
        then is the unit yielded; a unit whose check fires is held until a check of the longer
        reply passes. When the check of the complete reply fires (or any check fails: closed),
        a :class:`Withheld` event is yielded and the stored reply is the fixed resource or
        check-in message.

        Nothing is stored until the turn is complete: a cancelled turn (``should_stop()``
        true) raises :class:`Cancelled` and leaves the session unchanged.

        Idempotent turns: with ``request_id`` (1-64 ASCII letters, digits, ``-_.:``), the id is
        stored with the turn, and a later call with the same id and text gets the stored reply
        (:func:`replay_events`) instead of a second turn. A call that raced an earlier one with
        the same id, both running at once, ends with the reply the earlier one stored.

        On a store several processes share (a ``LockingSessionStore``: Redis), the turn holds
        its session's lock from its history read to its append, so turns of one session never
        overlap, whichever process runs them (``companion._serial``).

        Raises:
            InvalidArgument: empty, oversize or non-text message; malformed session or
                request id.
            SessionNotFound: no such session.
            FailedPrecondition: ``request_id`` names a stored turn with another message, or
                the session holds ``max_turns_per_session`` turns already.
            Cancelled: ``should_stop()`` became true before the turn was stored.
            Unavailable: the model failed or timed out, or the store failed; another turn held
                the session's lock too long, or this one lost it (nothing stored).
        """
        started = time.perf_counter()
        info, replay = self._prepare(session_id, text, request_id)
        if replay is not None:
            log.info("turn_replayed", session_id=session_id, turn_index=replay.turn_index)
            yield from replay_events(replay)
            return
        stop = should_stop or (lambda: False)
        lock = lock_turn(self.store, session_id, stop)
        try:
            # The lock may have made this wait for its own first try, now stored.
            if lock is not None and self.stored_reply(session_id, text, request_id) is not None:
                lock.release()
                yield from self._replay_raced(session_id, text, request_id)
                return
            yield from self._locked_turn(info, text, stop, request_id, lock, started)
        finally:
            if lock is not None:
                lock.release()

    def _locked_turn(
        self,
        info: SessionInfo,
        text: str,
        stop: ShouldStop,
        request_id: str | None,
        lock: TurnLock | None,
        started: float,
    ) -> Iterator[StreamEvent]:
        """The turn, from its history read to its append (under ``lock``): see :meth:`stream`."""
        session_id = info.id
        cfg = self.config
        # The newest turns only: what the checks need, or the first read for the model's window.
        need = max(FIRST_READ, checks_need(cfg.guard_context_turns, cfg.check_in_quiet_turns))
        history = self.store.recent(session_id, need)
        full = session_is_full(history, cfg.max_turns_per_session)
        n = cfg.guard_context_turns
        user_context = [t.text for t in history if t.role is Role.USER][-n:] if n else []
        state = triage_state(history, self.config.check_in_quiet_turns)
        timings: dict[str, float] = {} if lock is None else {"lock_wait_ms": lock.waited_ms}

        t0 = time.perf_counter()
        verdict_in = self._check(text, Role.USER, user_context, state.check_in)
        verdict_in, held_back = apply_triage(verdict_in, state)
        timings["input_guard_ms"] = _ms(t0)
        verdict_out: Verdict | None = None
        context_turns: int | None = None  # stored turns in the model's prompt
        pending: list[str] = []  # units passed by the final check, sent after the commit
        if full:  # no room to store the turn: only a message the guard acts on is answered
            yield self._unstored_fixed_reply(session_id, verdict_in, info.locale)
            return
        if verdict_in.fired:
            reply_text, resources, category, action = self._fixed_reply(verdict_in, info.locale)
        else:
            budget = (
                self.config.context_tokens or self.generator.context_window
            ) - self.config.generation.max_new_tokens
            history = self._read_for_model(session_id, history, text, budget)
            messages = build_messages(
                self.system_prompt,
                model_history(history),
                text,
                self.generator.count_tokens,
                budget,
            )
            context_turns = len(messages) - 2
            out = yield from release_checked(
                kept_while(self._generate(messages, stop, session_id), lock),
                lambda reply: self._check(reply, Role.ASSISTANT, []),
                stop,
                ReleaseBuffer(cfg.release_min_clause_chars, cfg.release_max_chars),
            )
            verdict_out, pending = out.verdict, out.pending
            timings["generate_ms"], timings["output_guard_ms"] = out.generate_ms, out.check_ms
            if verdict_out.fired:
                reply_text, resources, category, action = self._fixed_reply(
                    verdict_out, info.locale
                )
            else:
                generated = out.text.rstrip()
                reply_text, resources = generated or self.catalogue.empty_reply(info.locale), ()
                category, action = Category.NONE, Action.ANSWERED

        if stop():
            raise Cancelled("the turn was cancelled before it was stored")
        now = self.clock()
        decided = verdict_out if verdict_out is not None and verdict_out.fired else verdict_in
        reply = Reply(reply_text, category, action, tuple(resources), verdict_in, verdict_out)
        pair = [
            Turn(Role.USER, text, now, verdict_in.category, action, dict(verdict_in.scores)),
            Turn(Role.ASSISTANT, reply_text, now, category, action, dict(decided.scores)),
        ]
        outcome = outcome_json(reply) if request_id is not None else ""
        try:
            _, stored = append_turn(
                self.store, session_id, pair, request_id, outcome, lock, cfg.max_turns_per_session
            )
        except DuplicateRequest:  # an earlier call with this id stored its turn meanwhile
            yield from self._replay_raced(session_id, text, request_id)
            return
        reply = dataclasses.replace(reply, turn_index=stored.index)
        log.info(
            "turn",
            session_id=session_id,
            turn_index=stored.index,
            category=category.value,
            action=action.value,
            decided_by=decided.direction.value,
            input_scores=dict(verdict_in.scores),
            output_scores=dict(verdict_out.scores) if verdict_out else None,
            guard_error=verdict_in.error or (verdict_out.error if verdict_out else None),
            answering_check_in=bool(state.check_in),
            check_in_held_back=held_back,
            policy_version=decided.policy_version,
            message_chars=len(text),
            reply_chars=len(reply_text),
            history_read=len(history),
            context_turns=context_turns,
            total_ms=_ms(started),
            **timings,
        )
        withheld = verdict_out is not None and verdict_out.fired
        if withheld:
            yield Withheld(category)
        else:
            for part in pending:
                yield TextDelta(part)
        yield TurnDone(reply, withheld=withheld)

    def _unstored_fixed_reply(self, session_id: str, verdict: Verdict, locale: str) -> TurnDone:
        """The answer to a message in a session that holds ``max_turns_per_session`` turns:
        the fixed resource or check-in message when the guard acts on it (a person in crisis
        is never turned away by a quota), not stored (``turn_index`` -1); otherwise the turn
        is refused.

        Raises:
            FailedPrecondition: the guard does not act on the message.
        """
        if not verdict.fired:
            raise session_full(self.config.max_turns_per_session or 0)
        text, resources, category, action = self._fixed_reply(verdict, locale)
        log.info(
            "turn_not_stored",
            session_id=session_id,
            reason="session_full",
            category=category.value,
            action=action.value,
        )
        return TurnDone(Reply(text, category, action, tuple(resources), verdict, None))

    def _generate(
        self, messages: list[ChatMessage], stop: ShouldStop, session_id: str
    ) -> Iterator[str]:
        limit = self.config.generation_timeout_seconds
        gen = self.config.generation
        return generated(self.generator, gen, self._stuck_model, limit, messages, stop, session_id)

    def _read_for_model(
        self, session_id: str, newest: list[Turn], text: str, budget: int
    ) -> list[Turn]:
        count, prompt = self.generator.count_tokens, self.system_prompt
        key = (id(self.generator), budget, prompt)  # the bound renders two prompts: once
        if key not in self._bounds:
            self._bounds[key] = window_bound(count, prompt, budget)
        fits = fits_window(count, prompt, text, budget)
        return read_for_model(self.store, session_id, newest, self._bounds[key], fits)

    def _replay_raced(
        self, session_id: str, text: str, request_id: str | None
    ) -> Iterator[StreamEvent]:
        replay = self.stored_reply(session_id, text, request_id)
        if replay is None:  # pragma: no cover - the store just said it holds the id
            raise SessionNotFound(f"session {session_id} not found")
        log.info("turn_replayed", session_id=session_id, turn_index=replay.turn_index, raced=True)
        yield from replay_events(replay)

    def _fixed_reply(
        self, verdict: Verdict, locale: str
    ) -> tuple[str, tuple[Resource, ...], Category, Action]:
        """The fixed template for a verdict that fired: the check-in question, or the
        resource message (the fallback wording when the check itself failed)."""
        if verdict.decision is Decision.CHECK_IN:
            text, listed = self.catalogue.check_in(locale)
            return text, listed, Category.CRISIS, Action.CHECKED_IN
        text, listed = self.catalogue.message(
            verdict.category, locale, failed=verdict.error is not None
        )
        return text, tuple(listed), verdict.category, Action.REDIRECTED

    def _check(
        self, text: str, role: Role, context: list[str], last_assistant: str = ""
    ) -> Verdict:
        limit = self.config.guard_timeout_seconds
        return checked(self.guard, self._stuck_guard, limit, text, role, context, last_assistant)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)
