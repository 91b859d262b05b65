"""Helpers shared by the training scripts: chat formatting with the service's system prompt and
its rendering (``companion.models.render_chat``), and loss masks on the assistant tokens only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from companion.models import render_chat
from companion.prompts import SYSTEM_PROMPT

IGNORE_INDEX = -100


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def trains_last_only(example: dict[str, Any]) -> bool:
    """Whether only an example's last assistant turn is trained (``"train_on": "last"``, set
    by ``prepare_data.py`` for sources whose earlier turns are context, not targets)."""
    return example.get("train_on", "all") == "last"


def with_system(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation as the service sends it: our system prompt first."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, *messages]


def encode_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int, last_only: bool = False
) -> dict[str, list[int]] | None:
    """Token ids and labels for one conversation; labels are -100 except on assistant turns
    (with ``last_only``, except on the last one: earlier assistant turns are context only).

    The text is the service's own rendering (``companion.models.render_chat``): the model's chat
    template, or for a tokenizer without one (DialoGPT) the EOS-joined dialogue format. Each
    assistant turn's span starts where the prompt up to it (generation prompt included) ends and
    ends where the conversation up to it ends; a template that closes a whole conversation with
    EOS (Phi-3) still works for several assistant turns, the EOS trained on the last. Returns
    ``None`` when the conversation is longer than ``max_length`` tokens.
    """
    full = with_system(messages)
    text = render_chat(tokenizer, full, add_generation_prompt=False)
    pieces: list[tuple[str, bool]] = []
    done = 0
    for k, message in enumerate(full):
        if message["role"] != "assistant" or (last_only and k != len(full) - 1):
            continue
        prompt = render_chat(tokenizer, full[:k], add_generation_prompt=True)
        upto = render_chat(tokenizer, full[: k + 1], add_generation_prompt=False)
        if not text.startswith(prompt) or len(prompt) < done:
            raise ValueError("the chat template does not render conversations incrementally")
        # Phi-3's template closes a whole conversation with EOS; inside a longer one that
        # EOS is not there, so the turn ends before it.
        eos = tokenizer.eos_token or ""
        if eos and not text.startswith(upto) and upto.endswith(eos):
            upto = upto[: -len(eos)]
        if not text.startswith(upto) or len(upto) <= len(prompt):
            raise ValueError("the chat template does not render conversations incrementally")
        end = len(upto)
        pieces += [(text[done : len(prompt)], False), (text[len(prompt) : end], True)]
        done = end
    input_ids: list[int] = []
    labels: list[int] = []
    for piece, train_on in pieces:
        ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if train_on else [IGNORE_INDEX] * len(ids)
    if len(input_ids) > max_length or not any(t != IGNORE_INDEX for t in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}
