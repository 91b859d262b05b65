"""A :class:`~companion.protocols.Generator` that batches concurrent requests on one model.

On a CPU, one `model.generate` over several left-padded prompts costs little more per step than
over one (``benchmarks/batching.py``: 3.3x the tokens/s of one-at-a-time at 8 prompts, greedy
outputs identical), and transformers' continuous batching is slower than serial here. So one
worker thread owns the model: it takes the requests waiting (up to ``max_batch`` with the same
decoding settings), runs them as one batch, and hands each request its tokens as they come.
Each request stops on its own (a stop token, its ``max_new_tokens``, its ``should_stop``, or its
caller abandoning the stream) and leaves the batch at that step. Requests that arrive while a
batch runs wait for the next one: they do not join between steps.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any

from ..config import GenerationConfig
from ..protocols import ChatMessage, ShouldStop
from .generator import HFGenerator

__all__ = ["BatchedGenerator"]

_END = object()


@dataclass
class _Request:
    ids: list[int]
    config: GenerationConfig
    should_stop: ShouldStop | None
    out: SimpleQueue[Any] = field(default_factory=SimpleQueue)
    count: int = 0
    finished: bool = False
    abandoned: bool = False

    def finish(self, item: Any = _END) -> None:
        if not self.finished:
            self.finished = True
            self.out.put(item)


def _key(config: GenerationConfig) -> tuple[Any, ...]:
    """Requests share a batch only when they decode alike (lengths may differ)."""
    return (config.do_sample, config.temperature, config.top_p, config.repetition_penalty)


class BatchedGenerator(HFGenerator):
    """:class:`HFGenerator`'s chat format and stopping, with concurrent requests batched.

    Args:
        model: A transformers causal LM in eval mode.
        tokenizer: Its tokenizer (as for :class:`HFGenerator`).
        max_batch: Most requests in one batch.
        context_window: As for :class:`HFGenerator`.

    A request with a ``seed`` runs alone (a batch shares one random state).
    """

    def __init__(
        self, model: Any, tokenizer: Any, max_batch: int = 8, context_window: int | None = None
    ) -> None:
        super().__init__(model, tokenizer, context_window)
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: need >= 1")
        self.max_batch = max_batch
        self._pad = tokenizer.pad_token_id
        if self._pad is None:
            self._pad = tokenizer.eos_token_id
        self._waiting: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None
        self.batches: deque[int] = deque(maxlen=1024)
        """Sizes of the latest batches run (for tests and benchmarks; bounded)."""

    def stream(
        self,
        messages: Sequence[ChatMessage],
        config: GenerationConfig,
        should_stop: ShouldStop | None = None,
    ) -> Iterator[str]:
        """Yield reply text deltas; ``should_stop`` is polled after every token."""
        ids = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
        req = _Request(list(ids), config, should_stop)
        with self._ready:
            self._waiting.append(req)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._loop, name="companion-generate-batch", daemon=True
                )
                self._worker.start()
            self._ready.notify()
        tokens: list[int] = []
        shown = ""
        try:
            while True:
                item = req.out.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                tokens.append(item)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                delta, shown = text[len(shown) :], text
                if delta:
                    yield delta
        finally:
            req.abandoned = True  # a caller that stops reading frees its row at the next step

    def _take(self) -> list[_Request]:
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            first = self._waiting.popleft()
            batch = [first]
            if first.config.seed is None:
                for req in list(self._waiting):
                    if len(batch) >= self.max_batch:
                        break
                    if req.config.seed is None and _key(req.config) == _key(first.config):
                        self._waiting.remove(req)
                        batch.append(req)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            try:
                self._run(batch)
            except BaseException as exc:  # every request of the batch gets the error
                for req in batch:
                    req.finish(exc)
            finally:
                for req in batch:
                    req.finish()

    def _run(self, batch: list[_Request]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        self.batches.append(len(batch))
        stops = set(self._stop_ids)

        class _Step(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for k, req in enumerate(batch):
                    if not req.finished:
                        token = int(input_ids[k, -1])
                        if token in stops:
                            req.finish()
                        else:
                            req.out.put(token)
                            req.count += 1
                            if (
                                req.count >= req.config.max_new_tokens
                                or req.abandoned
                                or (req.should_stop is not None and req.should_stop())
                            ):
                                req.finish()
                    done[k] = req.finished
                return done

        width = max(len(r.ids) for r in batch)
        ids = torch.tensor([[self._pad] * (width - len(r.ids)) + r.ids for r in batch])
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in batch])
        config = batch[0].config
        kwargs: dict[str, Any] = {
            **self._decoding(config, self._pad),
            "input_ids": ids.to(self.model.device),
            "attention_mask": mask.to(self.model.device),
            "max_new_tokens": max(r.config.max_new_tokens for r in batch),
            "stopping_criteria": StoppingCriteriaList([_Step()]),
        }
        with self._lock, torch.inference_mode():
            if config.seed is not None:
                torch.manual_seed(config.seed)
            self.model.generate(**kwargs)
