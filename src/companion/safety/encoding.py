"""A lean encoding path for the guard: tokenizer -> transformer -> mean pooling -> L2 norm.

``SentenceTransformer.encode`` spends more time in Python bookkeeping than in the model when
it is asked for one short sentence. The guard checks one or two texts per call, so it calls
the underlying transformer directly under ``torch.inference_mode()``. The output equals
``SentenceTransformer.encode(..., normalize_embeddings=True)`` (checked by the tests); models
whose modules are not ``Transformer -> Pooling(mean) [-> Normalize]`` fall back to ``encode``.
Nothing derived from the text is kept after the call.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelLoadError
from ..protocols import Encoder

__all__ = ["LeanEncoder", "adapt_encoder", "adapter_digest", "lean"]


class LeanEncoder:
    """Wraps a sentence-transformers model for low-latency, small-batch encoding.

    Args:
        model: A loaded ``SentenceTransformer`` whose modules are a ``Transformer`` followed by
            mean ``Pooling`` (and optionally ``Normalize``).
        name: How the encoder is named in artifacts.
        batch_size: Texts per forward pass for large inputs (sorted by length first).
    """

    def __init__(self, model: Any, name: str, batch_size: int = 32) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        first = model[0]
        self._transformer = first.auto_model
        self._tokenizer = first.tokenizer
        self._max_length = int(first.max_seq_length)
        self._dim = int(self._transformer.config.hidden_size)
        self._transformer.eval()

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self._dim

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` into L2-normalised rows of shape ``(len(texts), dim)``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) <= self.batch_size:
            return self._forward(list(texts))
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._forward([texts[i] for i in idx])
        return out

    def _forward(self, texts: list[str]) -> npt.NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            batch = self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="pt",
            )
            device = next(self._transformer.parameters()).device
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = self._transformer(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return np.asarray(pooled.float().cpu().numpy(), dtype=np.float32)


def lean(encoder: Encoder) -> Encoder:
    """``encoder`` on the lean path when it is a plain mean-pooling sentence-transformers model.

    Anything else (a fake, another backend, CLS pooling) is returned unchanged.
    """
    model = getattr(encoder, "model", None)
    if model is None or isinstance(encoder, LeanEncoder):
        return encoder
    try:
        modules = list(model)
        pooling = modules[1]
        mode = getattr(pooling, "pooling_mode", None)  # sentence-transformers >= 6
        if isinstance(mode, str):
            mean_only = mode == "mean"
        else:
            mean_only = bool(getattr(pooling, "pooling_mode_mean_tokens", False)) and not any(
                getattr(pooling, f"pooling_mode_{m}", False)
                for m in ("cls_token", "max_tokens", "mean_sqrt_len_tokens")
            )
        kinds = [type(m).__name__ for m in modules]
    except (TypeError, IndexError, AttributeError):
        return encoder
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        return encoder
    if not mean_only:
        return encoder
    return LeanEncoder(model, str(getattr(encoder, "name", "unknown")))


def adapter_digest(adapter_dir: str | Path) -> str:
    """A short sha256 of an encoder adapter's weights and config (names it in caches and logs)."""
    folder = Path(adapter_dir)
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:10]


def adapt_encoder(encoder: Encoder, adapter_dir: str | Path) -> Encoder:
    """A copy of ``encoder`` with the LoRA adapter in ``adapter_dir`` merged into its transformer.

    The guard's fine-tuned encoder ships as a small PEFT LoRA adapter on the base sentence
    encoder (``safety/finetune_encoder.py``). Merging it gives plain weights, so a check costs
    what the base encoder costs. The encoder passed in is left untouched; the copy is named
    ``"<base name>+lora:<digest>"``.

    Raises:
        ModelLoadError: the adapter is missing, or ``encoder`` is not a sentence-transformers
            model with a ``Transformer`` first module.
    """
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise ModelLoadError(f"encoder adapter {folder} has no adapter_config.json")
    model: Any = getattr(encoder, "model", None)
    try:
        model[0].auto_model  # noqa: B018 - the check is the access
    except (TypeError, IndexError, AttributeError) as exc:
        raise ModelLoadError(
            "an encoder adapter needs a sentence-transformers model with a Transformer module"
        ) from exc
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise ModelLoadError("loading an encoder adapter needs peft: pip install peft") from exc
    st = copy.deepcopy(model)
    try:
        tuned = PeftModel.from_pretrained(st[0].auto_model, str(folder), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not apply encoder adapter {folder}: {exc}") from exc
    st[0].auto_model = tuned.merge_and_unload().eval()
    from ..models.encoder import SentenceEncoder

    name = f"{getattr(encoder, 'name', 'unknown')}+lora:{adapter_digest(folder)}"
    return SentenceEncoder(st, name)
