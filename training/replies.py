"""Replies of a model to held-out conversations, and what they are worth.

Shared by ``evaluate.py`` (base vs previous vs tuned adapter) and ``choose_decoding.py`` (the
service's default decoding, chosen on validation): the held-out prompts (every reply position
of a multi-turn style dialogue, the last of the other sources), batched generation with the
service's system prompt and a :class:`companion.GenerationConfig`, and per-model metrics:
length, replies that end on their own, the listening checks of ``listening.py``, output-guard
decisions and distinct-2.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from common import trains_last_only, with_system
from listening import assess, summarise
from tqdm import tqdm

from companion.config import GenerationConfig
from companion.models import render_chat, stop_token_ids
from companion.safety import ClassifyItem, SafetyClassifier
from companion.types import Decision, Role

Conversation = list[dict[str, str]]


def heldout_prompts(examples: Sequence[dict[str, Any]], limit: int, seed: int) -> list[dict]:
    """Distinct prompt conversations of a split: ``{"conversation", "reference", "source"}``.

    A multi-turn style dialogue gives one prompt per reply (the turns before it), so the later
    turns of a conversation are measured, not only first messages; other sources give their
    last reply. ``limit`` of them are kept, a deterministic sample by hash, in file order.
    """
    seen: set[str] = set()
    prompts: list[dict] = []
    for ex in examples:
        messages = ex["messages"]
        ends = [len(messages) - 1] if trains_last_only(ex) else range(1, len(messages), 2)
        for end in ends:
            conversation = [dict(m) for m in messages[:end]]
            key = json.dumps(conversation, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            prompts.append(
                {
                    "conversation": conversation,
                    "reference": messages[end]["content"],
                    "source": ex.get("source", "?"),
                }
            )
    if len(prompts) <= limit:
        return prompts

    def rank(i: int) -> str:
        return hashlib.sha256(
            f"{seed}:{json.dumps(prompts[i]['conversation'])}".encode()
        ).hexdigest()

    keep = set(sorted(range(len(prompts)), key=rank)[:limit])
    return [p for i, p in enumerate(prompts) if i in keep]


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    config: GenerationConfig,
    batch_size: int = 8,
    name: str = "model",
) -> list[dict[str, Any]]:
    """One reply per conversation, ``{"text", "tokens", "ended"}``, decoded as the service
    does (system prompt, chat template, ``config``); sampling is seeded by ``config.seed``
    per batch, so a run is reproducible."""
    tokenizer.padding_side = "left"
    stop_ids = stop_token_ids(tokenizer, model)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
        if config.do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    out: list[dict[str, Any]] = []
    bar = tqdm(total=len(conversations), desc=f"{name}: generating", unit="reply", file=sys.stderr)
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        texts = [render_chat(tokenizer, with_system(c), add_generation_prompt=True) for c in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        if config.seed is not None:
            torch.manual_seed(config.seed + start)
        gen = model.generate(
            **enc,
            **sampling,
            max_new_tokens=config.max_new_tokens,
            repetition_penalty=config.repetition_penalty,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            ended = any(t in stop_ids for t in row)
            if ended:
                row = row[: min(row.index(t) for t in stop_ids if t in row)]
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            out.append({"text": text, "tokens": len(row), "ended": ended})
        bar.update(len(batch))
    bar.close()
    return out


def distinct_2(texts: Sequence[str]) -> float:
    bigrams = [tuple(w[i : i + 2]) for w in (t.split() for t in texts) for i in range(len(w) - 1)]
    return len(set(bigrams)) / max(len(bigrams), 1)


def reply_metrics(
    replies: Sequence[dict[str, Any]],
    conversations: Sequence[Conversation],
    guard: SafetyClassifier,
) -> dict[str, Any]:
    """Length, endings, listening shares, guard decisions and distinct-2 of ``replies``; each
    reply also gets its ``listening`` labels and guard ``decision`` (for the report)."""
    checks = [assess(r["text"], c) for r, c in zip(replies, conversations, strict=True)]
    verdicts = guard.classify_batch(
        [ClassifyItem(r["text"] or " ", Role.ASSISTANT) for r in replies]
    )
    for reply, check, verdict in zip(replies, checks, verdicts, strict=True):
        reply["listening"] = {k: v for k, v in vars(check).items() if k != "words"}
        reply["decision"] = verdict.decision.value
    decisions = Counter(v.decision for v in verdicts)
    words = [c.words for c in checks]
    n = max(len(replies), 1)
    return {
        "replies": len(replies),
        "ended_on_own": round(sum(r["ended"] for r in replies) / n, 3),
        "words_median": statistics.median(words) if words else 0,
        "words_p10_p90": [round(q) for q in _deciles(words)],
        **{k: round(v, 3) for k, v in summarise(checks).items() if k != "n"},
        # any decision but none: the service would not release the reply
        "guard_flagged": round((n - decisions[Decision.NONE]) / n, 3) if replies else 0.0,
        "guard_check_in": round(decisions[Decision.CHECK_IN] / n, 3),
        "distinct_2": round(distinct_2([r["text"] for r in replies]), 3),
    }


def _deciles(values: Sequence[int]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    cuts = statistics.quantiles(values, n=10)
    return cuts[0], cuts[-1]


def listening_score(m: dict[str, Any]) -> float:
    """The decoding choice's objective: replies that listen, less those that lecture, wander
    or speak for someone else."""
    return float(
        m["reflection_or_open_question"] - m["directive"] - m["off_topic_or_wrong_speaker"]
    )
