"""Helpers shared by the training scripts: chat formatting with the service's system prompt and
loss masks on the assistant tokens only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from companion.prompts import SYSTEM_PROMPT

IGNORE_INDEX = -100


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def with_system(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation as the service sends it: our system prompt first."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, *messages]


def encode_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int
) -> dict[str, list[int]] | None:
    """Token ids and labels for one conversation; labels are -100 except on assistant turns.

    The chat template is rendered cumulatively, so this works for any template in which a
    longer conversation's text starts with the shorter one's (ChatML, Llama, Mistral...).
    Returns ``None`` when the conversation is longer than ``max_length`` tokens.
    """
    full = with_system(messages)
    render = tokenizer.apply_chat_template
    pieces: list[tuple[str, bool]] = []
    done = ""
    for k, message in enumerate(full):
        if message["role"] != "assistant":
            continue
        prompt = render(full[:k], tokenize=False, add_generation_prompt=True)
        upto = render(full[: k + 1], tokenize=False)
        if not prompt.startswith(done) or not upto.startswith(prompt):
            raise ValueError("the chat template does not render conversations incrementally")
        pieces += [(prompt[len(done) :], False), (upto[len(prompt) :], True)]
        done = upto
    input_ids: list[int] = []
    labels: list[int] = []
    for text, train_on in pieces:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if train_on else [IGNORE_INDEX] * len(ids)
    if len(input_ids) > max_length or not any(t != IGNORE_INDEX for t in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}
