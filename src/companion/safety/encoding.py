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
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelLoadError
from ..protocols import Encoder

__all__ = [
    "QUANTIZATIONS",
    "LeanEncoder",
    "adapt_encoder",
    "adapter_digest",
    "guard_encoder",
    "lean",
    "quantize_encoder",
    "set_transformer",
    "truncate_encoder",
]

QUANTIZATIONS = ("", "int8-dynamic")


class LeanEncoder:
    """Wraps a sentence-transformers model for low-latency, small-batch encoding.

    Args:
        model: A loaded ``SentenceTransformer`` whose modules are a ``Transformer`` followed by
            mean ``Pooling`` (and optionally ``Normalize``).
        name: How the encoder is named in artifacts.
        batch_size: Texts per forward pass for large inputs (sorted by length first).
        one_at_a_time: Run every text through its own forward pass. Needed for dynamically
            quantised models, whose activation scales are computed over the whole batch: a
            text's embedding would otherwise depend on the texts batched with it.
    """

    def __init__(
        self, model: Any, name: str, batch_size: int = 32, one_at_a_time: bool = False
    ) -> None:
        self.model = model
        self.name = name
        self.batch_size = 1 if one_at_a_time else batch_size
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


def lean(encoder: Encoder, one_at_a_time: bool = False) -> Encoder:
    """``encoder`` on the lean path when it is a plain mean-pooling sentence-transformers model.

    Anything else (a fake, another backend, CLS pooling) is returned unchanged.
    ``one_at_a_time``: see :class:`LeanEncoder`.
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
    return LeanEncoder(model, str(getattr(encoder, "name", "unknown")), one_at_a_time=one_at_a_time)


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
    model = _sentence_model(encoder)
    trained = _adapter_layers(folder)
    blocks = _layer_list(model[0].auto_model, required=False)
    layers = len(blocks) if blocks is not None else trained  # only BERT-family is checked
    if trained and trained != layers:
        raise ModelLoadError(
            f"encoder adapter {folder} was trained on a {trained}-layer encoder, not on "
            f"{layers} layers: set the policy's encoder_layers to {trained}"
        )
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise ModelLoadError("loading an encoder adapter needs peft: pip install peft") from exc
    st = copy.deepcopy(model)
    try:
        tuned = PeftModel.from_pretrained(st[0].auto_model, str(folder), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not apply encoder adapter {folder}: {exc}") from exc
    set_transformer(st[0], tuned.merge_and_unload().eval())
    from ..models.encoder import SentenceEncoder

    name = f"{getattr(encoder, 'name', 'unknown')}+lora:{adapter_digest(folder)}"
    return SentenceEncoder(st, name)


def _adapter_layers(folder: Path) -> int:
    """How many transformer layers the adapter's weights cover (0: unknown)."""
    from safetensors import safe_open

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    found = {int(m.group(1)) for k in keys if (m := re.search(r"\.layer\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _layer_list(transformer: Any, required: bool = True) -> Any:
    """The ``ModuleList`` of transformer blocks of a BERT-family encoder (``None`` for other
    architectures when not ``required``)."""
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if layers is None and required:
        raise ModelLoadError(
            f"cannot find the layers of {type(transformer).__name__}: only BERT-family encoders "
            "(model.encoder.layer) can be truncated"
        )
    return layers


def set_transformer(module: Any, transformer: Any) -> None:
    """Make ``transformer`` the model inside a sentence-transformers ``Transformer`` module.

    In sentence-transformers 6 ``auto_model`` is a read-only property over ``module.model``;
    assigning to it would only register an unused submodule (``nn.Module.__setattr__``), so
    the module would go on running the old model.
    """
    if isinstance(getattr(type(module), "auto_model", None), property):
        module.model = transformer
    else:  # older sentence-transformers: a plain attribute
        module.auto_model = transformer
    if module.auto_model is not transformer:
        raise ModelLoadError(f"could not replace the transformer of {type(module).__name__}")


def _sentence_model(encoder: Encoder) -> Any:
    model: Any = getattr(encoder, "model", None)
    try:
        model[0].auto_model  # noqa: B018 - the check is the access
    except (TypeError, IndexError, AttributeError) as exc:
        raise ModelLoadError(
            "shaping the guard's encoder needs a sentence-transformers model with a Transformer "
            "module"
        ) from exc
    return model


def truncate_encoder(encoder: Encoder, layers: int) -> Encoder:
    """A copy of ``encoder`` that keeps only its first ``layers`` transformer layers.

    Half the layers cost about half the time. The guard's encoder adapter is then trained on
    the truncated encoder (``finetune_encoder.py --layers``), so the kept layers learn the task.
    The copy is named ``"<name>:L<layers>"``; ``encoder`` is left untouched.

    Raises:
        ModelLoadError: not a BERT-family sentence-transformers model, or ``layers`` is not
            between 1 and the encoder's depth.
    """
    from torch import nn

    model = _sentence_model(encoder)
    depth = len(_layer_list(model[0].auto_model))
    if not 1 <= layers <= depth:
        raise ModelLoadError(f"encoder_layers={layers}: this encoder has {depth} layers")
    st = copy.deepcopy(model)
    transformer = st[0].auto_model
    transformer.encoder.layer = nn.ModuleList(list(transformer.encoder.layer)[:layers])
    transformer.config.num_hidden_layers = layers
    from ..models.encoder import SentenceEncoder

    return SentenceEncoder(st, f"{getattr(encoder, 'name', 'unknown')}:L{layers}")


def quantize_encoder(encoder: Encoder) -> Encoder:
    """A copy of ``encoder`` with every linear layer quantised to int8 (PyTorch dynamic
    quantisation: int8 weights, activations quantised per call).

    Measured on all-MiniLM-L6-v2 on our 2-core CPU: about 1.5x faster, but the embeddings move
    (cosine to fp32 over 102 seed texts: min 0.81, median 0.94), so a head must be trained and
    calibrated on the quantised encoder (the policy's ``encoder_quantization``); the shipped
    guard does not use it. Use it through :func:`lean` with ``one_at_a_time=True``. The copy
    is named ``"<name>+int8"``.
    """
    import torch

    model = _sentence_model(encoder)
    st = copy.deepcopy(model)
    with warnings.catch_warnings():  # the eager API is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            st[0].auto_model.eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )  # in place: ``st`` is already our copy
    set_transformer(st[0], quantized)
    from ..models.encoder import SentenceEncoder

    return SentenceEncoder(st, f"{getattr(encoder, 'name', 'unknown')}+int8")


def guard_encoder(
    encoder: Encoder,
    *,
    layers: int = 0,
    adapter: str | Path | None = None,
    quantization: str = "",
) -> Encoder:
    """The guard's encoder built from the base ``encoder``, in the order training used:
    keep the first ``layers`` layers (0: all), merge the LoRA ``adapter``, quantise
    (``"int8-dynamic"`` or ``""``), then take the lean path.

    Raises:
        ModelLoadError: see :func:`truncate_encoder` and :func:`adapt_encoder`; or an unknown
            ``quantization``.
    """
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"encoder_quantization={quantization!r}; expected {QUANTIZATIONS}")
    if layers:
        encoder = truncate_encoder(encoder, layers)
    if adapter:
        encoder = adapt_encoder(encoder, adapter)
    if quantization:
        encoder = quantize_encoder(encoder)
    return lean(encoder, one_at_a_time=bool(quantization))
