"""A :class:`~companion.protocols.Generator` on an OpenAI-compatible chat-completions server.

Generation moves to a serving engine (vLLM, TGI, llama.cpp's server, ``transformers serve``);
the system prompt, context assembly, guards and the release buffer stay in companion, so the
pipeline checks this generator's text exactly as it checks the local model's: nothing it
streams reaches a client before the output guard has passed it.

The client is the ``openai`` package (``pip install 'companion[openai]'``), streaming with
server-sent events. Its own retries are off: this module retries connection errors only, and
never once a token has been streamed (the reply would start again).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._logging import get_logger
from ..config import GenerationConfig
from ..errors import ModelLoadError, Unavailable
from ..protocols import ChatMessage, ShouldStop
from .chat_format import render_chat

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "OpenAIChatGenerator",
    "estimate_tokens",
    "load_tokenizer",
    "safe_url",
]

log = get_logger(__name__)

DEFAULT_CONTEXT_WINDOW = 4096
"""Tokens of prompt plus reply assumed when neither a setting nor a tokenizer directory's
``config.json`` says."""

_INSTALL_HINT = "pip install 'companion[openai]'"
# Sent when no key is configured: the openai client insists on one, and servers started without
# keys (vLLM, transformers serve, llama.cpp) ignore the header. Not a secret.
_NO_KEY = "EMPTY"
_MAX_BACKOFF_S = 4.0
_POLL_S = 0.05


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    """Prompt tokens of ``messages`` without a tokenizer: a documented over-the-thumb estimate.

    ``ceil(characters / 4)`` per message, plus 4 per message for the role markers, plus 3 for
    the assistant header. Four characters a token holds for English with BPE tokenizers; text
    in other scripts, emoji or code take more tokens, so the estimate can fall short: give
    ``openai_tokenizer`` (or a smaller ``openai_context_window``) for those.
    """
    return sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages) + 3


def safe_url(url: str) -> str:
    """``scheme://host:port/path`` of ``url``, without user info or query: for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # a port that is not a number: say nothing of it
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def load_tokenizer(name: str, cache_dir: Path | None = None) -> tuple[Any, int | None]:
    """The tokenizer the remote model uses, for context trimming, and its context window.

    Args:
        name: ``"embedded"`` for the embedded SmolLM2's (converted into the cache if it is not
            there yet), or a local tokenizer or model directory (or a Hugging Face id already
            in the local hub cache). Never downloaded.
        cache_dir: Overrides ``COMPANION_CACHE_DIR`` for the embedded model.

    Returns:
        ``(tokenizer, window)``: ``window`` is ``max_position_embeddings`` of the directory's
        ``config.json`` when it has one, else ``None``.

    Raises:
        ModelLoadError: transformers is missing or there is no tokenizer at ``name``.
    """
    from .lm import EMBEDDED_BASE, resolve_base

    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - a dependency of companion
        raise ModelLoadError(f"openai_tokenizer needs transformers: {exc}") from exc
    path = resolve_base(None, cache_dir)[0] if name in ("embedded", EMBEDDED_BASE) else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"openai_tokenizer {name!r}: no tokenizer found there ({type(exc).__name__}); give"
            " a local tokenizer directory or 'embedded'"
        ) from None
    window = None
    config = Path(path) / "config.json"
    if config.is_file():
        window = json.loads(config.read_text("utf-8")).get("max_position_embeddings")
    return tokenizer, window if isinstance(window, int) and window > 0 else None


class OpenAIChatGenerator:
    """Chat generation by an OpenAI-compatible server, streamed chunk by chunk.

    Decoding settings map onto the request: ``max_new_tokens`` -> ``max_tokens``;
    ``do_sample`` with ``temperature`` and ``top_p``, or greedy as ``temperature=0``;
    ``seed`` when set; ``repetition_penalty`` only with ``send_repetition_penalty`` (a
    non-standard field, sent in the body for servers that take it: vLLM, llama.cpp's server,
    TGI; ``transformers serve`` and the OpenAI API refuse it).

    Args:
        base_url: The server's API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: The model name each request carries (what the server serves it as).
        api_key: Bearer key for the server; ``None`` when it needs none. Never logged.
        tokenizer: The model's tokenizer (:func:`load_tokenizer`), for exact prompt token
            counts; ``None`` counts with :func:`estimate_tokens`.
        context_window: Tokens of prompt plus reply the server's model takes; ``None``:
            :data:`DEFAULT_CONTEXT_WINDOW`.
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds to wait for the response, and then for each streamed chunk.
        retries: Attempts after the first on a connection error (refused, reset, dropped
            before the first token, a connect timeout); never on a read timeout, an HTTP
            error status, or once a token has been streamed.
        backoff: Seconds before the first retry, doubling after each (at most 4 s, with
            jitter).
        send_repetition_penalty: Send ``repetition_penalty`` as an extra body field.

    Example:
        >>> gen = OpenAIChatGenerator("http://127.0.0.1:8000/v1", "companion-base")
        >>> "".join(gen.stream([{"role": "user", "content": "hi"}], GenerationConfig()))
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        tokenizer: Any = None,
        context_window: int | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        send_repetition_penalty: bool = False,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if not model:
            raise ValueError("model must name the model the server serves")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError(
                f"connect_timeout={connect_timeout}, read_timeout={read_timeout}: must be > 0"
            )
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries={retries}, backoff={backoff}: must be >= 0")
        if context_window is not None and context_window < 64:
            raise ValueError(f"context_window={context_window}: must be >= 64")
        try:
            import openai
        except ImportError as exc:
            raise ModelLoadError(
                f"generator='openai' needs the openai package: {_INSTALL_HINT}"
            ) from exc
        self._openai = openai
        self.model = model
        self.tokenizer = tokenizer
        self.server = safe_url(base_url)
        self.retries = retries
        self.backoff = backoff
        self.send_repetition_penalty = send_repetition_penalty
        self._context_window = context_window or DEFAULT_CONTEXT_WINDOW
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or _NO_KEY,
            max_retries=0,  # ours below: connection errors only, never mid-reply
            timeout=openai.Timeout(read_timeout, connect=connect_timeout),
        )

    @property
    def context_window(self) -> int:
        """Maximum tokens of prompt plus reply."""
        return self._context_window

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of ``messages``: exact with a tokenizer, else :func:`estimate_tokens`."""
        if self.tokenizer is None:
            return estimate_tokens(messages)
        text = render_chat(self.tokenizer, messages, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def request(self, messages: Sequence[ChatMessage], config: GenerationConfig) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for one reply."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "stream": True,
            "max_tokens": config.max_new_tokens,
        }
        if config.do_sample:
            body.update(temperature=config.temperature, top_p=config.top_p)
        else:
            body["temperature"] = 0.0  # greedy on vLLM, TGI, llama.cpp and transformers serve
        if config.seed is not None:
            body["seed"] = config.seed
        if self.send_repetition_penalty:
            body["extra_body"] = {"repetition_penalty": config.repetition_penalty}
        return body

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        """Yield reply text deltas as the server streams them.

        ``should_stop`` is polled after every chunk (and between retries); when it turns true,
        or when the caller closes this iterator, the HTTP response is closed, which the
        server sees as a disconnect and stops generating.

        Raises:
            Unavailable: the server cannot be reached, did not answer in time, answered with
                an error status, or its stream broke off (the message says which, never with
                request or reply text).
        """
        stop = should_stop or (lambda: False)
        request = self.request(messages, config)
        attempt = 0
        while not stop():
            sent = 0
            response = None
            try:
                response = self._client.chat.completions.create(**request)
                for chunk in response:
                    if stop():
                        return  # the finally below closes the upstream stream
                    text = chunk.choices[0].delta.content if chunk.choices else None
                    if text:
                        sent += 1
                        yield text
                return
            except Exception as exc:
                if sent or attempt >= self.retries or not self._is_connection_error(exc):
                    raise self._failure(exc, sent, attempt) from None
                attempt += 1
                log.warning(
                    "generation_retry",
                    server=self.server,
                    attempt=attempt,
                    error=type(exc).__name__,
                )
            finally:
                if response is not None:
                    response.close()
            if not _sleep(min(self.backoff * 2 ** (attempt - 1), _MAX_BACKOFF_S), stop):
                return

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def __enter__(self) -> OpenAIChatGenerator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _is_connection_error(self, exc: BaseException) -> bool:
        """Refused, reset or dropped connections and connect timeouts; not a read timeout
        (the server may be working on the request) nor an HTTP status."""
        if isinstance(exc, self._openai.APITimeoutError):
            return _named(exc.__cause__, "ConnectTimeout")
        if isinstance(exc, self._openai.APIConnectionError):
            return True
        # Raised while reading the stream: the transport's own (httpx) exceptions.
        return _named(exc, "NetworkError", "RemoteProtocolError")

    def _failure(self, exc: Exception, sent: int, attempt: int) -> Unavailable:
        """A safe :class:`Unavailable` for ``exc``: the reason, never the server's body (it
        can quote the request)."""
        status = getattr(exc, "status_code", None)
        if isinstance(exc, self._openai.APIStatusError):
            reason, message = "status", f"the generation server answered HTTP {status}"
        elif sent:
            reason = "stream_broken"
            message = f"the generation server's stream broke off after {sent} chunks"
        elif isinstance(exc, self._openai.APITimeoutError) or _named(exc, "TimeoutException"):
            reason, message = "timeout", "the generation server did not answer in time"
        elif isinstance(exc, self._openai.APIConnectionError) or self._is_connection_error(exc):
            reason, message = "connect", "cannot reach the generation server"
        else:
            reason, message = "error", "the generation server failed"
        log.warning(
            "generation_failed_upstream",
            server=self.server,
            reason=reason,
            status=status,
            error=type(exc).__name__,
            chunks=sent,
            retries=attempt,
        )
        return Unavailable(f"{message} ({self.server})")


def _named(exc: BaseException | None, *names: str) -> bool:
    """Whether ``exc``'s class or a base of it has one of ``names`` (httpx and httpx2 share
    their exception names, so neither needs importing)."""
    return exc is not None and any(c.__name__ in names for c in type(exc).__mro__)


def _sleep(seconds: float, stop: ShouldStop) -> bool:
    """Sleep ``seconds`` (with up to 25% jitter off), polling ``stop``; False if it turned
    true."""
    end = time.monotonic() + seconds * (1 - 0.25 * random.random())
    while (left := end - time.monotonic()) > 0:
        if stop():
            return False
        time.sleep(min(left, _POLL_S))
    return not stop()
