"""``companion serve`` on fake models, for tests/test_replicas.py (run as a script).

The server is the real one: ``companion.server.serve()`` with its settings read from the
``COMPANION_*`` variables (the Redis store among them) and JSON logs on stderr, exactly what
the ``companion serve`` command runs (``tests.replicas`` puts the repository on its
``PYTHONPATH``). Only the models are fakes: :class:`tests.fakes.FakeGuard`
(``RISK`` checks in, ``CRISIS`` redirects), and a generator that replies with the number and a
digest of the history turns in its prompt (``tests.replicas.echo_reply``), so a test can see
from the stored reply exactly what context the replica assembled. No text is logged for it.

Test-only knobs: ``COMPANION_TEST_TOKEN_SECONDS`` (a pause before each word, so turns overlap
and a kill can land mid-generation), ``COMPANION_TEST_MARKER_DIR`` (``generating-<n>`` is
touched there when the n-th generation starts).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from companion import Companion
from companion._logging import configure_logging
from companion.config import GenerationConfig
from companion.protocols import ChatMessage, ShouldStop
from companion.server import ServerSettings, serve
from companion.server.app import make_store
from tests.fakes import FakeGuard, WordTokens
from tests.replicas import echo_reply

PAUSE = float(os.environ.get("COMPANION_TEST_TOKEN_SECONDS", "0"))
MARKERS = os.environ.get("COMPANION_TEST_MARKER_DIR")


class ContextEcho(WordTokens):
    """Replies ``context <n> <digest>`` for the n history turns of its prompt."""

    context_window = 100_000

    def __init__(self) -> None:
        self._count = itertools.count(1)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        if MARKERS:
            (Path(MARKERS) / f"generating-{next(self._count)}").touch()
        for i, word in enumerate(echo_reply(messages[1:-1]).split(" ")):
            time.sleep(PAUSE)
            if should_stop is not None and should_stop():
                return
            yield word if i == 0 else " " + word


def main() -> None:
    settings = ServerSettings.from_env().replace(warmup=False)
    configure_logging(settings.log_level, json=True)

    def factory(s: ServerSettings) -> Companion:
        store = make_store(s)
        assert not isinstance(store, str), "the replica tests run on Redis"
        return Companion(FakeGuard(), ContextEcho(), store, config=s.pipeline_config())

    asyncio.run(serve(settings, factory=factory))


if __name__ == "__main__":
    main()
