"""Feature rows for the head: sentence embeddings plus hashed word and character n-grams.

Frozen sentence embeddings put "this exam is killing me" close to "I want to kill myself";
a linear head on them alone cannot reach high crisis recall without flagging many such hard
negatives. Hashed n-grams (stateless: no vocabulary to ship, scikit-learn's murmurhash
``HashingVectorizer``) give the head the surface cues ("myself", "kms", "mg") that the
embedding blurs. Both the runtime classifier and the training scripts build features here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["build_features", "feature_blocks"]


@lru_cache(maxsize=4)
def _vectorizers(buckets: int) -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import HashingVectorizer

    words = HashingVectorizer(
        n_features=buckets, ngram_range=(1, 2), alternate_sign=False, norm="l2", lowercase=True
    )
    chars = HashingVectorizer(
        n_features=buckets,
        analyzer="char_wb",
        ngram_range=(3, 5),
        alternate_sign=False,
        norm="l2",
        lowercase=True,
    )
    return words, chars


def feature_blocks(
    newest_emb: npt.NDArray[np.float32],
    newest_text: Sequence[str],
    window_emb: npt.NDArray[np.float32] | None = None,
    window_text: Sequence[str] | None = None,
    ngram_buckets: int = 0,
    ngram_scale: float = 2.0,
) -> list[Any]:
    """The blocks of :func:`build_features`, left side by side: ``[newest_emb, window_emb?,
    ngrams(newest)..., ngrams(window)?]`` (dense arrays, then scipy CSR matrices).

    A head can score blocks one by one (:meth:`LinearHead.scores_blocks`); for one message
    that skips the sparse ``hstack``, which costs more than the rest of the head.
    """
    blocks: list[Any] = [newest_emb.astype(np.float32, copy=False)]
    if window_emb is not None:
        blocks.append(window_emb.astype(np.float32, copy=False))
    if not ngram_buckets:
        return blocks
    import sklearn

    words, chars = _vectorizers(ngram_buckets)
    # scikit-learn's per-call parameter validation can cost milliseconds per check (measured
    # once on this shared 2-core CPU: two transforms of one message 10.2 ms -> 1.1 ms without
    # it); the inputs here are ours and always valid.
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        blocks += [
            ngram_scale * words.transform(newest_text),
            ngram_scale * chars.transform(newest_text),
        ]
        if window_text is not None:
            blocks.append(0.5 * ngram_scale * words.transform(window_text))
    return blocks


def build_features(
    newest_emb: npt.NDArray[np.float32],
    newest_text: Sequence[str],
    window_emb: npt.NDArray[np.float32] | None = None,
    window_text: Sequence[str] | None = None,
    ngram_buckets: int = 0,
    ngram_scale: float = 2.0,
) -> Any:
    """Feature rows ``[newest_emb, window_emb?, ngrams(newest), ngrams(window)?]``.

    Args:
        newest_emb: Embeddings of the (normalised) newest messages.
        newest_text: The normalised newest messages.
        window_emb: Embeddings of the windows (user messages with context), else ``None``.
        window_text: The normalised windows, else ``None``.
        ngram_buckets: Hash buckets per n-gram family; 0 turns n-grams off (dense output).
        ngram_scale: Weight of the n-gram block relative to the unit-norm embeddings.

    Returns:
        A dense array without n-grams, else a scipy CSR matrix.
    """
    blocks = feature_blocks(
        newest_emb, newest_text, window_emb, window_text, ngram_buckets, ngram_scale
    )
    dense = [b for b in blocks if isinstance(b, np.ndarray)]
    x = np.concatenate(dense, axis=1).astype(np.float32)
    if not ngram_buckets:
        return x
    from scipy import sparse

    return sparse.hstack(
        [sparse.csr_matrix(x), *blocks[len(dense) :]], format="csr", dtype=np.float32
    )
