"""The guard's sentence encoder on ONNX Runtime (``guard_runtime = "onnx"`` or ``"onnx-int8"``).

The torch encoder the policy describes (truncated, adapter merged: :func:`guard_encoder`) is
exported once to ONNX, optionally quantised to int8 with ONNX Runtime's dynamic quantisation
(int8 weights per channel, activations per call; VNNI/AVX-512 kernels where the CPU has them),
and cached under ``COMPANION_CACHE_DIR/guard-onnx/``, keyed by the encoder's name (which
carries the adapter's digest) and the runtime versions. :class:`OnnxEncoder` then does what
:class:`~companion.safety.encoding.LeanEncoder` does (tokenise, mean-pool, L2-normalise) behind
the same :class:`~companion.protocols.Encoder` seam, so heads and thresholds are unchanged.

The int8 encoder's embeddings move a little (cosine to the torch path ~0.95-0.97), so whether it
keeps the torch path's verdicts is measured, per policy, by ``safety/runtime_agreement.py``
(the classifier card has the figures). It runs every text through its own pass: dynamic
quantisation scales activations over the whole input, so a text's embedding would otherwise
depend on the texts batched with it.

Needs ``onnxruntime`` and ``onnx`` (``pip install 'companion[onnx]'``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelLoadError
from ..protocols import Encoder
from .encoding import LeanEncoder

__all__ = ["RUNTIMES", "OnnxEncoder", "onnx_encoder"]

RUNTIMES = ("torch", "onnx", "onnx-int8")
"""The guard's encoder runtimes: ``torch`` (the default), ONNX Runtime fp32 or int8."""


class OnnxEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from an ONNX transformer.

    Args:
        session: An ``onnxruntime.InferenceSession`` whose output 0 is the last hidden state.
        tokenizer: The encoder's tokenizer.
        name: How the encoder is named (the torch encoder's name plus the runtime).
        max_length: Tokens per text (the sentence-transformers model's ``max_seq_length``).
        dim: Embedding size.
        one_at_a_time: One text per run (for int8: see the module docstring).
    """

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        name: str,
        max_length: int,
        dim: int,
        one_at_a_time: bool = False,
    ) -> None:
        self.session = session
        self.name = name
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._dim = dim
        self._one = one_at_a_time
        self._inputs = [i.name for i in session.get_inputs()]

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self._dim

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` into L2-normalised rows of shape ``(len(texts), dim)``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._one and len(texts) > 1:
            return np.concatenate([self._forward([t]) for t in texts])
        return self._forward(list(texts))

    def _forward(self, texts: list[str]) -> npt.NDArray[np.float32]:
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="np"
        )
        feed = {k: np.asarray(batch[k], dtype=np.int64) for k in self._inputs}
        hidden = self.session.run(None, feed)[0]
        mask = np.asarray(batch["attention_mask"], dtype=np.float32)[..., None]
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norm = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norm, dtype=np.float32)


def onnx_encoder(
    encoder: Encoder, runtime: str, threads: int = 1, cache_dir: Path | None = None
) -> Encoder:
    """``encoder`` (the guard's torch encoder, on the lean path) run by ONNX Runtime.

    Args:
        encoder: What :func:`~companion.safety.encoding.guard_encoder` returned.
        runtime: ``"onnx"`` (fp32) or ``"onnx-int8"``; ``"torch"`` returns ``encoder``.
        threads: ONNX Runtime intra-op threads (the guard's share of the CPU).
        cache_dir: Overrides ``COMPANION_CACHE_DIR`` for the exported file.

    Raises:
        ModelLoadError: an unknown runtime, onnxruntime or onnx missing, or an encoder that is
            not a plain mean-pooling sentence-transformers model.
    """
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"guard_runtime={runtime!r}; expected one of {RUNTIMES}")
    if runtime == "torch":
        return encoder
    if not isinstance(encoder, LeanEncoder) or encoder.batch_size == 1:
        raise ModelLoadError(
            f"guard_runtime={runtime!r} needs the guard's fp32 mean-pooling encoder; "
            f"{getattr(encoder, 'name', type(encoder).__name__)!r} is not one"
        )
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelLoadError(
            f"guard_runtime={runtime!r} needs onnxruntime: pip install 'companion[onnx]'"
        ) from exc
    from ..config import cache_dir as default_cache_dir

    int8 = runtime == "onnx-int8"
    key = hashlib.sha256(
        f"{encoder.name}|{runtime}|{ort.__version__}|{_torch_version()}".encode()
    ).hexdigest()[:16]
    path = default_cache_dir(cache_dir) / "guard-onnx" / f"{key}.onnx"
    if not path.is_file():
        _export(encoder, path, int8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxEncoder(
        session,
        encoder._tokenizer,
        f"{encoder.name}+{runtime}",
        encoder._max_length,
        encoder.dim,
        one_at_a_time=int8,
    )


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _export(encoder: LeanEncoder, path: Path, int8: bool) -> None:
    """Export the encoder's transformer (int8-quantised when asked) to ``path`` atomically."""
    import torch

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - onnxruntime ships it
        raise ModelLoadError("onnxruntime.quantization is missing") from exc
    transformer = encoder._transformer
    sample = encoder._tokenizer(["a sample text", "a"], padding=True, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]

    class _Hidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        axes = {k: {0: "batch", 1: "tokens"} for k in [*names, "hidden"]}
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Hidden(transformer).eval(),
                    tuple(sample[k] for k in names),
                    str(fp32),
                    input_names=names,
                    output_names=["hidden"],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
        except Exception as exc:
            raise ModelLoadError(f"could not export the guard's encoder to ONNX: {exc}") from exc
        out = fp32
        if int8:
            out = Path(tmp) / "int8.onnx"
            quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(out, path)  # another process may have won the race: its file is the same
