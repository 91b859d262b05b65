"""Scoring heads: turn features built from sentence embeddings into per-label scores in ``[0, 1]``.

A head is anything with ``labels`` and ``scores(features, role)``; the classifier does not care
how it was made. :class:`LinearHead` is the trained multi-label logistic-regression head that
``safety/train.py`` fits, one weight matrix per role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..types import Role

__all__ = ["FloatArray", "Head", "LinearHead"]

FloatArray = npt.NDArray[np.float32]


class Head(Protocol):
    """Maps features to one score per label."""

    labels: tuple[str, ...]

    def scores(self, features: Any, role: Role) -> FloatArray:
        """Scores of shape ``(n, len(labels))`` for ``n`` feature rows written by ``role``."""
        ...


class LinearHead:
    """Independent logistic regressions per label: ``sigmoid(features @ W[role] + b[role])``.

    Args:
        weights: Per role, ``(W, b)`` with ``W`` of shape ``(n_features, n_labels)`` and ``b``
            of shape ``(n_labels,)``.
        labels: The scored labels, in the column order of ``W``.

    Example:
        >>> head = LinearHead({Role.USER: (np.eye(2, dtype=np.float32), np.zeros(2))},
        ...                   ("crisis", "medical"))
        >>> head.scores(np.array([[5.0, -5.0]], dtype=np.float32), Role.USER).round(2)
        array([[0.99, 0.01]], dtype=float32)
    """

    def __init__(
        self,
        weights: Mapping[Role, tuple[npt.ArrayLike, npt.ArrayLike]],
        labels: Sequence[str] = ("crisis", "medical"),
    ) -> None:
        self.labels = tuple(labels)
        self._weights: dict[Role, tuple[FloatArray, FloatArray]] = {}
        for role, (w, b) in weights.items():
            w_arr = np.asarray(w, dtype=np.float32)
            b_arr = np.asarray(b, dtype=np.float32).reshape(-1)
            if w_arr.ndim != 2 or w_arr.shape[1] != len(self.labels):
                raise ValueError(
                    f"weights for role {Role(role).value!r} have shape {w_arr.shape}; "
                    f"expected (n_features, {len(self.labels)})"
                )
            if b_arr.shape != (len(self.labels),):
                raise ValueError(f"bias for role {Role(role).value!r} has shape {b_arr.shape}")
            self._weights[Role(role)] = (w_arr, b_arr)

    @property
    def roles(self) -> tuple[Role, ...]:
        """The roles this head has weights for."""
        return tuple(self._weights)

    def restricted(self, roles: Sequence[Role]) -> LinearHead:
        """The same head with the weights of ``roles`` only."""
        return LinearHead({r: self._weights[Role(r)] for r in roles}, self.labels)

    def n_features(self, role: Role) -> int:
        """Width of the feature rows this head expects for ``role``."""
        return int(self._weights[Role(role)][0].shape[0])

    def scores(self, features: Any, role: Role) -> FloatArray:
        """Probabilities of shape ``(n, len(labels))``; ``features`` dense or scipy sparse."""
        w, b = self._weights[Role(role)]
        return _sigmoid(np.asarray(features @ w, dtype=np.float32) + b)

    def scores_blocks(self, blocks: Sequence[Any], role: Role) -> FloatArray:
        """:meth:`scores` of the features ``hstack(blocks)``, without building them: each block
        meets its own rows of ``W``."""
        w, b = self._weights[Role(role)]
        widths = [blk.shape[1] for blk in blocks]
        if sum(widths) != w.shape[0]:
            raise ValueError(f"blocks are {sum(widths)} features wide; the head expects {len(w)}")
        logits = np.zeros((blocks[0].shape[0], w.shape[1]), dtype=np.float32) + b
        start = 0
        for blk, width in zip(blocks, widths, strict=True):
            logits += np.asarray(blk @ w[start : start + width], dtype=np.float32)
            start += width
        return _sigmoid(logits)

    def save(self, path: str | Path) -> None:
        """Write the weights to an ``.npz`` file."""
        arrays: dict[str, FloatArray] = {}
        for role, (w, b) in self._weights.items():
            arrays[f"{role.value}_W"] = w
            arrays[f"{role.value}_b"] = b
        np.savez_compressed(Path(path), **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path, labels: Sequence[str]) -> LinearHead:
        """Read weights written by :meth:`save`."""
        with np.load(Path(path)) as data:
            weights = {
                role: (data[f"{role.value}_W"], data[f"{role.value}_b"])
                for role in Role
                if f"{role.value}_W" in data
            }
        return cls(weights, labels)


def _sigmoid(logits: npt.ArrayLike) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30))), dtype=np.float32)
