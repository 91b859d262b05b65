"""Feature rows for the head: sentence embeddings plus hashed word and character n-grams.

Frozen sentence embeddings put "this exam is killing me" close to "I want to kill myself";
a linear head on them alone cannot reach high crisis recall without flagging many such hard
negatives. Hashed n-grams (stateless: no vocabulary to ship; scikit-learn's analyzers and
murmurhash, equal to its ``HashingVectorizer``) give the head the surface cues ("myself",
"kms", "mg") that the embedding blurs. Both the runtime classifier and the training scripts
build features here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HashedNgrams", "build_features", "feature_blocks", "hashed_ngrams"]


@lru_cache(maxsize=1)
def _analyzers() -> tuple[Any, Any]:
    """scikit-learn's analyzers: lowercase word 1-2-grams and char_wb 3-5-grams."""
    from sklearn.feature_extraction.text import HashingVectorizer

    words = HashingVectorizer(ngram_range=(1, 2), lowercase=True)
    chars = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True)
    return words.build_analyzer(), chars.build_analyzer()


@dataclass(frozen=True)
class HashedNgrams:
    """Rows of hashed n-gram counts, each row L2-normalised and scaled: CSR arrays without
    scipy's per-matrix bookkeeping, which costs more than the hashing for one message.

    Equal to scikit-learn's ``HashingVectorizer(n_features=width, alternate_sign=False,
    norm="l2")`` output times the scale (the tests compare them), so heads trained on either
    fit both. ``rows @ w`` multiplies by a dense weight block; :meth:`tocsr` gives scipy's form.
    """

    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.indptr) - 1, self.width)

    def __matmul__(self, w: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = np.zeros((self.shape[0], w.shape[1]), dtype=np.float32)
        for i in range(self.shape[0]):
            lo, hi = self.indptr[i], self.indptr[i + 1]
            out[i] = self.values[lo:hi] @ w[self.indices[lo:hi]]
        return out

    def tocsr(self) -> Any:
        from scipy import sparse

        return sparse.csr_matrix(
            (self.values, self.indices, self.indptr), shape=self.shape, dtype=np.float32
        )


def hashed_ngrams(texts: Sequence[str], analyzer: Any, buckets: int, scale: float) -> HashedNgrams:
    """``scale`` x the L2-normalised hashed counts of ``analyzer``'s n-grams of each text
    (murmurhash3 seed 0, bucket ``abs(h) % buckets``: scikit-learn's ``FeatureHasher``)."""
    from sklearn.utils import murmurhash3_32

    indptr = [0]
    indices: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float32]] = []
    for text in texts:
        hashes = np.array([murmurhash3_32(g, seed=0) for g in analyzer(text)], dtype=np.int64)
        buckets_hit = np.where(
            hashes == -(2**31), (2**31 - 1 - (buckets - 1)) % buckets, np.abs(hashes) % buckets
        )
        idx, counts = np.unique(buckets_hit, return_counts=True)
        vals = counts.astype(np.float64)
        norm = float(np.sqrt((vals**2).sum()))
        indices.append(idx.astype(np.int64))
        values.append((scale * vals / norm if norm else vals).astype(np.float32))
        indptr.append(indptr[-1] + len(idx))
    return HashedNgrams(
        np.array(indptr, dtype=np.int64),
        np.concatenate(indices) if indices else np.zeros(0, np.int64),
        np.concatenate(values) if values else np.zeros(0, np.float32),
        buckets,
    )


def feature_blocks(
    newest_emb: npt.NDArray[np.float32],
    newest_text: Sequence[str],
    window_emb: npt.NDArray[np.float32] | None = None,
    window_text: Sequence[str] | None = None,
    ngram_buckets: int = 0,
    ngram_scale: float = 2.0,
    answer: Sequence[bool] | None = None,
) -> list[Any]:
    """The blocks of :func:`build_features`, left side by side: ``[newest_emb, window_emb?,
    answer_emb?, answer_bias?, ngrams(newest)..., ngrams(window)?, ngrams(answer)?]`` (dense
    arrays, then :class:`HashedNgrams`).

    ``answer`` (one flag per row, or ``None`` for policies without it) marks messages that
    answer the companion's check-in question. Their embedding and word n-grams are repeated in
    blocks of their own (zero for other rows), so the head has separate weights for reading an
    answer: "no, nothing like that" after a check-in is not the same as "no" anywhere else.

    A head can score blocks one by one (:meth:`LinearHead.scores_blocks`); for one message
    that skips building a sparse matrix, which costs more than the rest of the head.
    """
    blocks: list[Any] = [newest_emb.astype(np.float32, copy=False)]
    if window_emb is not None:
        blocks.append(window_emb.astype(np.float32, copy=False))
    mask = None if answer is None else np.asarray(answer, dtype=np.float32).reshape(-1, 1)
    if mask is not None:
        blocks += [blocks[0] * mask, mask]
    if not ngram_buckets:
        return blocks
    words, chars = _analyzers()
    blocks += [
        hashed_ngrams(newest_text, words, ngram_buckets, ngram_scale),
        hashed_ngrams(newest_text, chars, ngram_buckets, ngram_scale),
    ]
    if window_text is not None:
        blocks.append(hashed_ngrams(window_text, words, ngram_buckets, 0.5 * ngram_scale))
    if answer is not None:
        answers = [t if a else "" for t, a in zip(newest_text, answer, strict=True)]
        blocks.append(hashed_ngrams(answers, words, ngram_buckets, ngram_scale))
    return blocks


def build_features(
    newest_emb: npt.NDArray[np.float32],
    newest_text: Sequence[str],
    window_emb: npt.NDArray[np.float32] | None = None,
    window_text: Sequence[str] | None = None,
    ngram_buckets: int = 0,
    ngram_scale: float = 2.0,
    answer: Sequence[bool] | None = None,
) -> Any:
    """Feature rows ``[newest_emb, window_emb?, answer blocks?, ngrams(newest),
    ngrams(window)?, ngrams(answer)?]`` (see :func:`feature_blocks`).

    Args:
        newest_emb: Embeddings of the (normalised) newest messages.
        newest_text: The normalised newest messages.
        window_emb: Embeddings of the windows (user messages with context), else ``None``.
        window_text: The normalised windows, else ``None``.
        ngram_buckets: Hash buckets per n-gram family; 0 turns n-grams off (dense output).
        ngram_scale: Weight of the n-gram block relative to the unit-norm embeddings.
        answer: Per row, whether the message answers a check-in (``None``: no answer blocks).

    Returns:
        A dense array without n-grams, else a scipy CSR matrix.
    """
    blocks = feature_blocks(
        newest_emb, newest_text, window_emb, window_text, ngram_buckets, ngram_scale, answer
    )
    dense = [b for b in blocks if isinstance(b, np.ndarray)]
    x = np.concatenate(dense, axis=1).astype(np.float32)
    if not ngram_buckets:
        return x
    from scipy import sparse

    return sparse.hstack(
        [sparse.csr_matrix(x), *(b.tocsr() for b in blocks[len(dense) :])],
        format="csr",
        dtype=np.float32,
    )
