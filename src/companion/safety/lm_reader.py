"""The cascade's second opinion: the embedded SmolLM2-135M as a sequence classifier ("M").

A user message whose cross-encoder crisis score lies in the policy's middle band (between the
user ``crisis`` threshold and ``second_opinion["sure"]``) is redirected as crisis only when M
agrees (classifier card, "Round 33 rule"). SmolLM2-135M-Instruct knows more of the world than
MiniLM. M reads the cross-encoder's (conversation, message) pair as one text, ``Earlier: ...`` /
``Newest: ...``, with a four-way head on its last token, trained by ``safety/train_second.py``.
One read costs several cross-encoder reads, so it runs only on those messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .cross import CLASSES

__all__ = ["LMReader", "lm_text", "load_lm_reader"]

MAX_TOKENS = 256
"""Longer texts are cut (the pair's context is already at most three turns)."""

FloatArray = npt.NDArray[np.float32]


def lm_text(pair: tuple[str, str]) -> str:
    """The one text the LM reader classifies (its last token carries the verdict)."""
    earlier, message = pair
    return f"Earlier: {earlier}\nNewest: {message}" if earlier else f"Newest: {message}"


def softmax(z: FloatArray) -> FloatArray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


class LMReader:
    """Class probabilities (in :data:`~companion.safety.cross.CLASSES` order) of
    (conversation, message) pairs from a causal LM with a classification head
    (``AutoModelForSequenceClassification``, LoRA merged, eval mode)."""

    def __init__(self, tokenizer: Any, model: Any, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: need > 0")
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.temperature = float(temperature)

    def logits(self, pairs: Sequence[tuple[str, str]], size: int = 32) -> FloatArray:
        """Raw head logits, one row per pair, in batches of ``size``."""
        import torch

        out = np.zeros((len(pairs), len(CLASSES)), dtype=np.float32)
        for start in range(0, len(pairs), size):
            batch = self.tokenizer(
                [lm_text(p) for p in pairs[start : start + size]],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                out[start : start + size] = self.model(**batch).logits.float().numpy()
        return out

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> FloatArray:
        """Softmax of the logits at the calibrated temperature."""
        return softmax(self.logits(pairs) / self.temperature)


def load_lm_reader(folder: str | Path, temperature: float, base: str | None = None) -> LMReader:
    """The LM reader of ``folder`` (a PEFT sequence-classification adapter: LoRA and the head)
    merged into ``base`` (a path or id; ``None``: the embedded SmolLM2, converted once into the
    cache, see :func:`companion.models.lm.resolve_base`)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..models.lm import resolve_base

    path, local_only = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(CLASSES), local_files_only=local_only
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return LMReader(tokenizer, merged, temperature)
