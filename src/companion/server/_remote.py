"""The remote generator of ``generator = "openai"``, built from :class:`ServerSettings`."""

from __future__ import annotations

from pathlib import Path

from .._logging import get_logger
from ..errors import ModelLoadError
from ..protocols import Generator
from .settings import ServerSettings

__all__ = ["make_generator"]

log = get_logger("companion.server")


def make_generator(settings: ServerSettings) -> Generator | None:
    """The remote generator these settings describe, or ``None`` for the local model.

    Reads ``openai_api_key_file`` and loads ``openai_tokenizer`` when they are set.

    Raises:
        ModelLoadError: the key file cannot be read or is empty, the tokenizer is missing, or
            the ``openai`` package is not installed (the message names the setting or the
            path, never the key).
    """
    if settings.generator != "openai":
        return None
    from ..models.openai_chat import OpenAIChatGenerator, load_tokenizer

    assert settings.openai_base_url and settings.openai_model  # the settings' own rule
    key = settings.openai_api_key
    if settings.openai_api_key_file is not None:
        key = _read_key(Path(settings.openai_api_key_file))
    tokenizer, window = (None, None)
    if settings.openai_tokenizer is not None:
        tokenizer, window = load_tokenizer(settings.openai_tokenizer)
    generator = OpenAIChatGenerator(
        settings.openai_base_url,
        settings.openai_model,
        key,
        tokenizer=tokenizer,
        context_window=settings.openai_context_window or window,
        connect_timeout=settings.openai_connect_timeout,
        read_timeout=settings.openai_read_timeout,
        retries=settings.openai_retries,
        send_repetition_penalty=settings.openai_repetition_penalty,
    )
    log.info(
        "generator",
        kind="openai",
        server=generator.server,
        model=settings.openai_model,
        api_key=key is not None,
        tokenizer=settings.openai_tokenizer or "estimate",
        context_window=generator.context_window,
    )
    return generator


def _read_key(path: Path) -> str:
    try:
        key = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ModelLoadError(f"openai_api_key_file {path}: cannot read it ({reason})") from None
    if not key:
        raise ModelLoadError(f"openai_api_key_file {path} is empty")
    return key
