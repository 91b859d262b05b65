"""The user-side reader of policy 5: all-MiniLM-L6-v2 fine-tuned as a cross-encoder.

The whole exchange the guard must judge is one encoder input, a text pair: the earlier user
turns (newest last, and a fixed marker when the companion's last message was the check-in
question) as the first text, the newest message as the second. Self-attention reads the message
in the light of the conversation, instead of comparing two separately pooled embeddings. A
linear head over the mean-pooled tokens gives four logits, softmaxed at the calibrated
temperature: ``none``, ``check_in``, ``crisis``, ``medical``.

Model replies are not read by this model: the embedding head of the same artifact and the
risk-topic rule (``topics.py``) check them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .normalize import normalize

__all__ = ["CHECK_IN_MARK", "CLASSES", "CrossReader", "load_cross_reader", "pair_texts", "scores"]

CLASSES = ("none", "check_in", "crisis", "medical")
"""The cross-encoder's output classes, in logit order."""

CHECK_IN_MARK = "[the companion asked if they have thoughts of ending their life]"
"""Appended to the first text when the newest message answers the check-in question: the
question's wording differs per locale, the marker does not."""

CONTEXT_WORDS = 100
MESSAGE_WORDS = 90
MAX_TOKENS = 256


def pair_texts(
    text: str, context: Sequence[str], answers_check_in: bool, turns: int
) -> tuple[str, str]:
    """The (conversation, message) pair the cross-encoder reads, normalised as at training.

    The first text keeps the newest ``turns`` earlier user turns that fit in ``CONTEXT_WORDS``
    words (older words dropped first); the message keeps its first ``MESSAGE_WORDS`` words.
    """
    earlier = [normalize(t) for t in list(context)[-turns:] if turns > 0 and t and t.strip()]
    words = " | ".join(earlier).split()[-CONTEXT_WORDS:]
    if answers_check_in:
        words.append(CHECK_IN_MARK)
    message = " ".join(normalize(text).split()[:MESSAGE_WORDS])
    return " ".join(words), message


def pooled_pairs(tokenizer: Any, model: Any, pairs: Sequence[tuple[str, str]]) -> tuple[Any, int]:
    """Mean-pooled token states of the text pairs (one forward pass; training and run time
    share it) and the number of real tokens in the batch."""
    batch = tokenizer(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        padding=True,
        truncation="longest_first",
        max_length=MAX_TOKENS,
        return_tensors="pt",
    )
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), int(batch["attention_mask"].sum())


class CrossReader:
    """Class probabilities of text pairs from a sequence-pair encoder and a linear head.

    Args:
        tokenizer: The encoder's tokenizer (a BERT-style pair tokenizer).
        model: The transformer (``AutoModel``), LoRA already merged, in eval mode.
        weight: Head weights, shape ``(len(CLASSES), hidden)``.
        bias: Head bias, shape ``(len(CLASSES),)``.
        temperature: Logits are divided by it before the softmax (calibrated on validation).
    """

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        weight: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        temperature: float = 1.0,
    ) -> None:
        import torch

        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: need > 0")
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.weight = torch.from_numpy(np.asarray(weight, dtype=np.float32))
        self.bias = torch.from_numpy(np.asarray(bias, dtype=np.float32))
        self.temperature = float(temperature)

    def logits(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """Raw head logits, one row per pair (one forward pass)."""
        import torch

        if not pairs:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        with torch.inference_mode():
            pooled, _ = pooled_pairs(self.tokenizer, self.model, pairs)
            out = pooled @ self.weight.T + self.bias
        result: npt.NDArray[np.float32] = out.numpy().astype(np.float32)
        return result

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """Softmax of the logits at the calibrated temperature."""
        z = self.logits(pairs) / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        result: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return result


def scores(
    probabilities: npt.NDArray[np.float32], labels: Sequence[str]
) -> npt.NDArray[np.float32]:
    """Per-label scores from class probabilities, columns in ``labels`` order: ``crisis`` and
    ``medical`` are their classes' probabilities, ``risk`` (at least a check-in) is
    p(check_in) + p(crisis)."""
    p = np.asarray(probabilities, dtype=np.float32)
    by = {
        "crisis": p[:, CLASSES.index("crisis")],
        "medical": p[:, CLASSES.index("medical")],
        "risk": p[:, CLASSES.index("check_in")] + p[:, CLASSES.index("crisis")],
    }
    return np.stack([by[label] for label in labels], axis=1).astype(np.float32)


def load_cross_reader(base: Any, folder: str | Path, temperature: float) -> CrossReader:
    """The cross-encoder of an artifact: the LoRA adapter in ``folder`` merged into a copy of
    the base sentence encoder ``base`` (left untouched), and the head in ``folder/head.npz``.

    Raises:
        ModelLoadError: see :func:`~companion.safety.encoding.adapt_encoder`, or a head whose
            shape does not fit.
    """
    from ..errors import ModelLoadError
    from .encoding import adapt_encoder

    tuned: Any = adapt_encoder(base, folder)
    module = tuned.model[0]
    with np.load(Path(folder) / "head.npz") as data:
        weight, bias = data["weight"], data["bias"]
    hidden = module.auto_model.config.hidden_size
    if weight.shape != (len(CLASSES), hidden) or bias.shape != (len(CLASSES),):
        raise ModelLoadError(
            f"cross-encoder head {folder} has shape {weight.shape}, expected "
            f"{(len(CLASSES), hidden)}"
        )
    return CrossReader(module.tokenizer, module.auto_model, weight, bias, temperature)
