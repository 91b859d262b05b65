"""A :class:`~companion.protocols.Generator` that batches concurrent requests on one model.

On a CPU, one forward pass over several sequences costs little more than over one
(``benchmarks/batching.py``: a static batch of 8 gives 3.3x the tokens/s of one-at-a-time,
greedy outputs identical), and transformers' continuous batching is slower than serial here. So
one worker thread owns the model and decodes step by step over the running set:

- a new request **joins between steps**: its prompt is run alone (prefill), then its key/value
  cache is left-padded to the running set's length and joined on the batch axis;
- the prefill skips the longest start a prompt shares with a recent prompt or a finished
  reply (:class:`~companion.models._prefix_cache.PrefixCache`): the system prompt at least,
  and for a session's next turn its earlier turns and the reply the model just wrote, since on
  a CPU prefilling them costs more than decoding a short reply;
- each step feeds every running row its last token (one forward pass, explicit positions, the
  padding masked out) and picks each row's next token with that row's own decoding settings
  (repetition penalty, temperature, top-k, top-p, its own seeded random generator);
- a row **leaves at the step it stops**: a stop token, its ``max_new_tokens``, its
  ``should_stop``, or its caller abandoning the stream; left columns that only padding uses
  are trimmed then.

An error in a step reaches every running request; an error in a prefill only that request.
The model must keep a plain key/value cache (:class:`transformers.DynamicCache` of
``DynamicLayer`` s): sliding-window and recurrent caches cannot be joined this way.
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
from ._prefix_cache import PrefixCache
from .generator import HFGenerator

__all__ = ["BatchedGenerator"]

_END = object()
_TOP_K = 50  # transformers' default top-k when sampling and the model's config sets none
_MIN_PREFIX = 16  # shortest shared prompt start worth reusing, in tokens


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


class _Row:
    """A running request: its tokens so far, its next position and how it picks tokens."""

    def __init__(self, req: _Request, processors: Any, device: Any) -> None:
        import torch

        self.req = req
        self.seq = list(req.ids)  # prompt and reply so far, for the repetition penalty
        self.position = len(req.ids)
        self.processors = processors
        self.sampler: Any = None
        if req.config.do_sample:
            self.sampler = torch.Generator(device=device)  # where the logits are
            if req.config.seed is None:
                self.sampler.seed()
            else:
                self.sampler.manual_seed(req.config.seed)

    def pick(self, logits: Any) -> int:
        """The next token from this row's last-position logits."""
        import torch

        ids = torch.tensor([self.seq], device=logits.device)
        scores = self.processors(ids, logits[None].float())
        if self.sampler is None:
            return int(scores[0].argmax())
        probs = torch.softmax(scores[0], dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.sampler))


class BatchedGenerator(HFGenerator):
    """:class:`HFGenerator`'s chat format and stopping, with concurrent requests batched step
    by step.

    Args:
        model: A transformers causal LM in eval mode, with a plain key/value cache.
        tokenizer: Its tokenizer (as for :class:`HFGenerator`).
        max_batch: Most requests decoding at once; more wait for a row to free.
        context_window: As for :class:`HFGenerator`.
        prefix_cache_mb: Memory for the keys and values of recent prompts and replies that
            later prompts start with (0: none reused).

    A seeded request samples from its own random generator, so its seed is honoured inside a
    batch; the reply can still differ from a run alone in rare near-ties, since batched
    arithmetic rounds differently.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch: int = 8,
        context_window: int | None = None,
        prefix_cache_mb: int = 256,
    ) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        super().__init__(model, tokenizer, context_window)
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: need >= 1")
        kinds = {type(layer) for layer in DynamicCache(config=model.config).layers}
        if kinds - {DynamicLayer}:
            raise ValueError(
                "batched generation needs a model with a plain key/value cache; this one "
                f"uses {sorted(k.__name__ for k in kinds)}: use generation_batch_size=1"
            )
        self.max_batch = max_batch
        self._waiting: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None
        top_k = getattr(model.generation_config, "top_k", None)
        self._top_k = _TOP_K if top_k is None else int(top_k)
        self._cache_arg = _cache_argument(model)
        self._stops = set(self._stop_ids)
        self._prefixes = PrefixCache(prefix_cache_mb * 2**20)
        self.steps: deque[int] = deque(maxlen=4096)
        """Rows in each of the latest decoding steps (for tests and benchmarks; bounded)."""
        self.reused: deque[tuple[int, int]] = deque(maxlen=4096)
        """(prompt tokens, tokens of them reused from a stored prefix) of the latest prefills."""

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
            if not req.finished:  # a caller that stops reading frees its row at the next step
                req.abandoned = True

    def _processors(self, config: GenerationConfig) -> Any:
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        out = LogitsProcessorList()
        if config.repetition_penalty != 1.0:  # the order model.generate applies them in
            out.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.do_sample:
            if config.temperature != 1.0:
                out.append(TemperatureLogitsWarper(config.temperature))
            if self._top_k > 0:
                out.append(TopKLogitsWarper(self._top_k))
            if config.top_p < 1.0:
                out.append(TopPLogitsWarper(config.top_p))
        return out

    def _admit(self, running: int, block: bool) -> list[_Request]:
        """Waiting requests for the free rows; blocks for one when nothing runs."""
        with self._ready:
            while block and not self._waiting:
                self._ready.wait()
            out: list[_Request] = []
            while self._waiting and running + len(out) < self.max_batch:
                req = self._waiting.popleft()
                if req.abandoned:
                    req.finish()
                else:
                    out.append(req)
            return out

    def _loop(self) -> None:
        batch = _Batch(self)
        while True:
            for req in self._admit(len(batch.rows), block=not batch.rows):
                try:
                    batch.join(req)
                except BaseException as exc:  # only this request's prefill failed
                    req.finish(exc)
            if not batch.rows:
                continue
            try:
                batch.step()
            except BaseException as exc:  # every running request gets the error
                for row in batch.rows:
                    row.req.finish(exc)
                batch = _Batch(self)

    def _emit(self, row: _Row, token: int) -> None:
        """Hand ``token`` to the row's caller, or finish the row when it should stop."""
        req = row.req
        if token in self._stops:
            req.finish()
            return
        req.out.put(token)
        req.count += 1
        row.seq.append(token)
        if (
            req.count >= req.config.max_new_tokens
            or req.abandoned
            or (req.should_stop is not None and req.should_stop())
        ):
            req.finish()


class _Batch:
    """The running rows and their joined key/value cache, left-padded to one length."""

    def __init__(self, gen: BatchedGenerator) -> None:
        self.gen = gen
        self.rows: list[_Row] = []
        self.cache: Any = None  # DynamicCache, batch axis = rows
        self.mask: Any = None  # (rows, length) 1 for real tokens, 0 for left padding

    def join(self, req: _Request) -> None:
        """Prefill ``req`` alone (after its longest stored prefix), pick its first token and join
        it to the running rows."""
        import torch
        from transformers import DynamicCache

        gen = self.gen
        device = gen.model.device
        row = _Row(req, gen._processors(req.config), device)
        n = len(req.ids)
        reuse, stored = gen._prefixes.longest(req.ids)
        reuse = min(reuse, n - 1)
        if reuse >= _MIN_PREFIX and stored is not None:
            kv = [(k[:, :, :reuse], v[:, :, :reuse]) for k, v in stored]
            cache = DynamicCache(ddp_cache_data=kv, config=gen.model.config)
        else:
            reuse, cache = 0, DynamicCache(config=gen.model.config)
        ids = torch.tensor([req.ids[reuse:]], device=device)
        with torch.inference_mode():
            out = gen.model(
                input_ids=ids,
                attention_mask=torch.ones(1, n, dtype=torch.long, device=device),
                position_ids=torch.arange(reuse, n, device=device)[None],
                use_cache=True,
                logits_to_keep=1,
                **{gen._cache_arg: cache},
            )
        cache = getattr(out, gen._cache_arg)
        gen.reused.append((n, reuse))
        gen._prefixes.put(req.ids, [(layer.keys, layer.values) for layer in cache.layers])
        gen._emit(row, row.pick(out.logits[0, -1]))
        if req.finished:
            return
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        mask = torch.ones(1, n, dtype=torch.long, device=device)
        if not self.rows:
            self.rows, self.cache, self.mask = [row], cache, mask
            return
        old = [(layer.keys, layer.values) for layer in self.cache.layers]
        width = max(self.mask.shape[1], mask.shape[1])
        kv = [
            (
                torch.cat([_pad(k0, width), _pad(k1, width)]),
                torch.cat([_pad(v0, width), _pad(v1, width)]),
            )
            for (k0, v0), (k1, v1) in zip(old, kv, strict=True)
        ]
        self.cache = DynamicCache(ddp_cache_data=kv, config=gen.model.config)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(mask, width)])
        self.rows.append(row)

    def _keep_prefix(self, k: int, row: _Row) -> None:
        """Store row ``k``'s keys and values (its prompt and the reply tokens fed so far): the
        session's next prompt starts with them."""
        start = int(self.mask[k].nonzero()[0])
        kv = [
            (layer.keys[k : k + 1, :, start:].clone(), layer.values[k : k + 1, :, start:].clone())
            for layer in self.cache.layers
        ]
        if kv and kv[0][0].shape[2] == row.position:
            self.gen._prefixes.put(row.seq[: row.position], kv)

    def step(self) -> None:
        """One token for every running row; rows that stop leave."""
        import torch
        from transformers import DynamicCache

        gen = self.gen
        gen.steps.append(len(self.rows))
        device = self.mask.device
        last = torch.tensor([[row.seq[-1]] for row in self.rows], device=device)
        positions = torch.tensor([[row.position] for row in self.rows], device=device)
        self.mask = torch.cat([self.mask, torch.ones_like(last)], dim=1)
        with torch.inference_mode():
            out = gen.model(
                input_ids=last,
                attention_mask=self.mask,
                position_ids=positions,
                use_cache=True,
                **{gen._cache_arg: self.cache},
            )
        self.cache = getattr(out, gen._cache_arg)
        for k, row in enumerate(self.rows):
            row.position += 1
            gen._emit(row, row.pick(out.logits[k, -1]))
        keep = [k for k, row in enumerate(self.rows) if not row.req.finished]
        if len(keep) == len(self.rows):
            return
        for k, row in enumerate(self.rows):
            if row.req.finished and not row.req.abandoned:
                self._keep_prefix(k, row)
        self.rows = [self.rows[k] for k in keep]
        if not self.rows:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=device)
        self.mask = self.mask[index]
        start = int((self.mask.sum(0) > 0).nonzero()[0])  # columns only padding uses go
        self.mask = self.mask[:, start:]
        kv = [
            (layer.keys[index, :, start:], layer.values[index, :, start:])
            for layer in self.cache.layers
        ]
        self.cache = DynamicCache(ddp_cache_data=kv, config=gen.model.config)


def _cache_argument(model: Any) -> str:
    """The forward keyword for the key/value cache: ``cache`` in newer transformers 5 releases,
    ``past_key_values`` before (a PEFT wrapper is looked through)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _pad(t: Any, width: int) -> Any:
    """Left-pad a (batch, heads, length, dim) key or value tensor with zeros to ``width``."""
    import torch.nn.functional as F

    return F.pad(t, (0, 0, width - t.shape[2], 0))


def _pad_mask(mask: Any, width: int) -> Any:
    import torch.nn.functional as F

    return F.pad(mask, (width - mask.shape[1], 0))
