"""Scoring heads: turn sentence embeddings into per-category scores in ``[0, 1]``.

A head is anything with ``labels`` and ``scores(embeddings, role)``; the classifier does not care
how it was made. :class:`ExemplarHead` is the first-generation nearest-neighbour head over
hand-written examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..types import Role

__all__ = ["ExemplarHead", "Head"]

FloatArray = npt.NDArray[np.float32]


class Head(Protocol):
    """Maps embeddings to one score per label."""

    labels: tuple[str, ...]

    def scores(self, embeddings: FloatArray, role: Role) -> FloatArray:
        """Scores of shape ``(n, len(labels))`` for ``n`` embeddings written by ``role``."""
        ...


class ExemplarHead:
    """Similarity-weighted vote of the ``k`` nearest labelled examples.

    For each query the ``k`` most similar examples (cosine) vote with weight
    ``exp(similarity / temperature)``; a label's score is its share of the vote. Examples
    labelled ``"none"`` take part in the vote, which is what keeps "this exam is killing me"
    away from "I want to kill myself".

    Args:
        examples: Per role, ``{label: embeddings}``; must include ``"none"``.
        labels: The scored labels, e.g. ``("crisis", "medical")``.
        k: Neighbours that vote.
        temperature: Softness of the vote.
    """

    def __init__(
        self,
        examples: Mapping[Role, Mapping[str, FloatArray]],
        labels: Sequence[str] = ("crisis", "medical"),
        k: int = 5,
        temperature: float = 0.05,
    ) -> None:
        self.labels = tuple(labels)
        self.k = k
        self.temperature = temperature
        self._bank: dict[Role, tuple[FloatArray, npt.NDArray[np.int64]]] = {}
        names = (*self.labels, "none")
        for role, by_label in examples.items():
            vecs = [
                np.asarray(by_label[name], dtype=np.float32) for name in names if name in by_label
            ]
            ids = [
                np.full(len(by_label[name]), i) for i, name in enumerate(names) if name in by_label
            ]
            self._bank[role] = (np.concatenate(vecs), np.concatenate(ids).astype(np.int64))

    def scores(self, embeddings: FloatArray, role: Role) -> FloatArray:
        """Vote shares of shape ``(n, len(labels))``."""
        bank, ids = self._bank[role]
        sims = embeddings @ bank.T
        k = min(self.k, bank.shape[0])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / self.temperature)
        weights /= weights.sum(axis=1, keepdims=True)
        out = np.zeros((embeddings.shape[0], len(self.labels)), dtype=np.float32)
        for j in range(len(self.labels)):
            out[:, j] = (weights * (ids[top] == j)).sum(axis=1)
        return out
