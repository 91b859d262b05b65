"""Logging: library modules call :func:`get_logger`; only entry points call
:func:`configure_logging`.

The library logs through the standard :mod:`logging` machinery, under the ``companion`` logger,
which carries a :class:`logging.NullHandler`: an application that configures no logging sees
nothing, one that does gets our lines through its own handlers and levels. An application that
configures structlog gets our events run through its processors.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import structlog
from structlog.typing import Processor

__all__ = ["LEVELS", "configure_logging", "get_logger"]

LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

# The library's loggers are silent until the application adds a handler (logging HOWTO,
# "Configuring Logging for a Library"); without this, Python's last-resort handler would print
# our warnings and errors to stderr.
logging.getLogger("companion").addHandler(logging.NullHandler())

# For an application that configured logging but not structlog: one key=value line per event.
_PLAIN: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.processors.format_exc_info,
    structlog.processors.LogfmtRenderer(key_order=["event"]),
)


class _Processors:
    """The processor chain of library loggers, chosen at each event: the application's
    structlog processors when it configured structlog (so ``structlog.testing.capture_logs``
    and the entry points' configuration apply), the plain chain otherwise. structlog's own
    defaults would render coloured console text into the application's log handlers."""

    def __iter__(self) -> Iterator[Processor]:
        if structlog.is_configured():
            return iter(structlog.get_config()["processors"])
        return iter(_PLAIN)


_PROCESSORS = _Processors()


def get_logger(name: str) -> Any:
    """A structlog logger that writes to the standard library logger ``name``.

    Args:
        name: A dotted name under ``companion`` (pass ``__name__``).
    """
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_HANDLER_MARK = "_companion_entry_point"


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Send all logs to stderr: JSON lines when stderr is not a terminal, console otherwise.

    For entry points only (the ``companion`` command); it configures structlog and the root
    logger of the process. Calling it again replaces the earlier configuration.

    Args:
        level: Minimum level, one of :data:`LEVELS`.
        json: Force JSON (True) or console (False) output; ``None`` decides by the terminal.

    Raises:
        ValueError: ``level`` is not a known level name.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,  # records of other libraries (grpc, asyncio...)
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # The console renderer formats exceptions itself.
                *([structlog.processors.format_exc_info] if use_json else []),
                renderer,
            ],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party progress bars and warnings are noise in a chat terminal and in service logs.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    # The remote generator's HTTP client logs a line per request (and, at debug, every
    # connection step); the generator logs what matters itself, without text or keys.
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
