"""The second user-side reader: the embedded SmolLM2-135M as a sequence classifier, and the
cascade that asks it only when the cross-encoder is unsure.

SmolLM2-135M-Instruct knows more of the world than MiniLM (doses, calories, what an overdose
does), and reads the same (conversation, message) pair as one text, ``Earlier: ...`` /
``Newest: ...``, with a four-way head on its last token (``safety/train_lm_reader.py``). One
forward pass costs several times the cross-encoder's, so :class:`CascadeReader` runs it only on
the messages whose cross-encoder risk falls in a band, and averages the two models' calibrated
class probabilities there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .cross import CLASSES

__all__ = ["CascadeReader", "LMReader", "lm_text", "load_lm_reader", "with_second"]

MAX_TOKENS = 256
FloatArray = npt.NDArray[np.float32]


class Reader(Protocol):
    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> FloatArray: ...


def lm_text(pair: tuple[str, str]) -> str:
    """The one text the LM reader classifies (its last token carries the verdict)."""
    earlier, message = pair
    return f"Earlier: {earlier}\nNewest: {message}" if earlier else f"Newest: {message}"


def _softmax(z: FloatArray) -> FloatArray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


class LMReader:
    """Class probabilities of (conversation, message) pairs from a causal LM with a
    classification head (``AutoModelForSequenceClassification``, LoRA merged, eval mode)."""

    def __init__(self, tokenizer: Any, model: Any, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: need > 0")
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.temperature = float(temperature)

    def logits(self, pairs: Sequence[tuple[str, str]]) -> FloatArray:
        """Raw head logits, one row per pair (one forward pass)."""
        import torch

        if not pairs:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        batch = self.tokenizer(
            [lm_text(p) for p in pairs],
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.model(**batch).logits
        result: FloatArray = out.float().numpy()
        return result

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> FloatArray:
        """Softmax of the logits at the calibrated temperature."""
        return _softmax(self.logits(pairs) / self.temperature)


class CascadeReader:
    """``first`` reads every pair; where its risk (p(check_in) + p(crisis)) lies in
    ``[low, high)``, ``second`` reads the pair too and the two probability rows are averaged.

    ``calls`` and ``second_calls`` count pairs read, for the benchmark's report.
    """

    def __init__(self, first: Reader, second: Reader, low: float, high: float) -> None:
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"band [{low}, {high}): need 0 <= low < high <= 1")
        self.first, self.second = first, second
        self.low, self.high = low, high
        self.calls = self.second_calls = 0

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> FloatArray:
        p = np.array(self.first.probabilities(pairs), dtype=np.float32)
        risk = p[:, CLASSES.index("check_in")] + p[:, CLASSES.index("crisis")]
        band = np.flatnonzero((risk >= self.low) & (risk < self.high))
        self.calls += len(pairs)
        self.second_calls += len(band)
        if len(band):
            q = self.second.probabilities([pairs[int(i)] for i in band])
            p[band] = (p[band] + q) / 2
        return p


def load_lm_reader(base: str, folder: str | Path, temperature: float) -> LMReader:
    """The LM reader of ``folder`` (a PEFT adapter saved by ``train_lm_reader.py``: LoRA and
    the head) merged into the base model ``base`` (a path or id, as ``models.lm.resolve_base``
    returns)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(CLASSES))
    model.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return LMReader(tokenizer, merged, temperature)


def with_second(reader: Any, policy: Any, artifact: str | Path | None) -> Any:
    """``reader`` (the cross-encoder), wrapped in a :class:`CascadeReader` with the policy's
    second reader on the embedded SmolLM2 when the artifact has one."""
    from .artifact import second_dir

    folder = second_dir(policy, artifact)
    if folder is None:
        return reader
    from ..models.lm import resolve_base

    base, _ = resolve_base(None)
    second = load_lm_reader(base, folder, policy.second_temperature)
    return CascadeReader(reader, second, *policy.second_band)
