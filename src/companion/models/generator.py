"""A :class:`~companion.protocols.Generator` backed by a transformers causal LM."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..config import GenerationConfig
from ..protocols import ChatMessage, ShouldStop
from .chat_format import has_chat_template, render_chat, stop_token_ids

__all__ = ["HFGenerator"]


class HFGenerator:
    """Chat generation with the model's own chat template, streamed token by token.

    A tokenizer without a chat template (DialoGPT) gets the EOS-joined dialogue format of
    :mod:`companion.models.chat_format`, the same one ``training/`` trains with.

    Args:
        model: A transformers causal LM (or PEFT-wrapped one) in eval mode.
        tokenizer: Its tokenizer: with a chat template, or at least an EOS token.
        context_window: Tokens of prompt plus reply; defaults to the model's
            ``max_position_embeddings``.
        static_cache: Decode with a fixed-shape key/value cache (``cache_implementation=
            "static"``). On a CUDA device transformers then compiles the decoding step with
            ``torch.compile`` (the first turn pays the compile, and a turn that needs a longer
            cache than any before may recompile); on a CPU it only changes the cache. Off by
            default: the plain path is the CPU default.

    Example:
        >>> lm, tok = load_causal_lm()
        >>> gen = HFGenerator(lm, tok)
        >>> "".join(gen.stream([{"role": "user", "content": "hi"}], GenerationConfig()))
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        context_window: int | None = None,
        static_cache: bool = False,
    ) -> None:
        if not has_chat_template(tokenizer) and not getattr(tokenizer, "eos_token", None):
            raise ValueError(
                "the tokenizer has neither a chat template nor an EOS token; pass a chat model "
                "or a dialogue model with an EOS token"
            )
        self.model = model
        self.tokenizer = tokenizer
        self._context_window = context_window or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        # Stop at the end of the assistant turn, whatever the template calls it.
        self._stop_ids = stop_token_ids(tokenizer, model)
        self.static_cache = static_cache
        # One generation at a time per model: torch modules are not re-entrant across threads
        # for our purposes, and on a 2-core CPU concurrency would only add contention.
        self._lock = threading.Lock()

    @property
    def context_window(self) -> int:
        """Maximum tokens of prompt plus reply."""
        return self._context_window

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt string for ``messages``, generation prompt included."""
        return render_chat(self.tokenizer, messages, add_generation_prompt=True)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the prompt for ``messages`` takes."""
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def _decoding(self, config: GenerationConfig, pad_token_id: int | None) -> dict[str, Any]:
        """``generate`` arguments for ``config``'s decoding, stop tokens and padding."""
        out: dict[str, Any] = {
            "do_sample": config.do_sample,
            "repetition_penalty": config.repetition_penalty,
            "eos_token_id": self._stop_ids,
            "pad_token_id": pad_token_id,
        }
        if config.do_sample:
            out.update(temperature=config.temperature, top_p=config.top_p)
        else:
            out.update(temperature=None, top_p=None, top_k=None)
        return out

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        """Yield reply text deltas; ``should_stop`` is polled after every token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                stop = should_stop is not None and should_stop()
                return torch.full(
                    (input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device
                )

        enc = self.tokenizer(self.render(messages), add_special_tokens=False, return_tensors="pt")
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            **enc,
            **self._decoding(config, self.tokenizer.pad_token_id),
            "max_new_tokens": config.max_new_tokens,
            "stopping_criteria": StoppingCriteriaList([_Stop()]),
            "streamer": streamer,
        }
        if self.static_cache:
            kwargs["cache_implementation"] = "static"
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if config.seed is not None:
                        torch.manual_seed(config.seed)
                    self.model.generate(**kwargs)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                streamer.end()  # type: ignore[no-untyped-call]

        worker = threading.Thread(target=run, name="companion-generate", daemon=True)
        worker.start()
        try:
            for delta in streamer:
                if delta:
                    yield delta
        finally:
            worker.join()
        if errors:
            raise errors[0]
