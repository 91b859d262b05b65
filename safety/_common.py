"""Helpers shared by the safety scripts (prepare -> train -> calibrate -> evaluate -> benchmark).

Not part of the ``companion`` package: the scripts import the package, never the reverse.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = str(REPO_ROOT.parent / "shared" / "data")
DEFAULT_RUN_DIR = str(REPO_ROOT / "runs" / "safety")
SEED_DIR = str(REPO_ROOT / "safety" / "data")
LABELS = ("crisis", "medical", "risk")
"""Head columns. Row labels are none / check_in / crisis / medical: ``risk`` is check_in or
crisis (at least a check-in), ``crisis`` a redirect, ``medical`` a medical redirect."""
LABEL_HITS = {"crisis": {"crisis"}, "medical": {"medical"}, "risk": {"crisis", "check_in"}}
"""Head column -> the row labels that are positives for it."""


def parse_args(cls: type) -> Any:
    """Parse ``sys.argv`` into the dataclass ``cls`` (transformers' HfArgumentParser)."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(cls).parse_args_into_dataclasses()
    return args


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows; returns how many."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def data_hash(rows: Sequence[dict[str, Any]]) -> str:
    """A short sha256 of the rows' text, context, role and label (order-independent)."""
    keys = sorted(
        json.dumps([r["text"], r.get("context", []), r["role"], r["label"]], ensure_ascii=False)
        for r in rows
    )
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:16]


def targets(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Multi-label 0/1 targets of shape ``(n, len(LABELS))``."""
    return np.array(
        [[float(r["label"] in LABEL_HITS[lab]) for lab in LABELS] for r in rows], dtype=np.float32
    )


class EmbeddingCache:
    """Embeddings of normalised texts, cached on disk by sha1 so reruns skip the encoder.

    Args:
        encoder: An encoder with ``encode`` and ``name``.
        path: ``.npz`` cache file (per encoder).
    """

    def __init__(self, encoder: Any, path: str | Path) -> None:
        self.encoder = encoder
        self.path = Path(path)
        self._store: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as data:
                keys, vecs = data["keys"], data["vecs"]
                self._store = {str(k): v for k, v in zip(keys, vecs, strict=True)}
        self._dirty = False

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` (already normalised), encoding only the unseen ones."""
        keys = [self._key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._store}
        if missing:
            todo = list(missing.items())
            for start in range(0, len(todo), 256):
                chunk = todo[start : start + 256]
                vecs = self.encoder.encode([t for _, t in chunk])
                for (k, _), v in zip(chunk, vecs, strict=True):
                    self._store[k] = v
                self._dirty = True
                if (start // 256) % 8 == 7:
                    self.save()  # a long first run that is interrupted keeps its progress
                print(f"  encoded {min(start + 256, len(todo))}/{len(todo)} new texts", flush=True)
        if not keys:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._store[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        """Write the cache if anything was added."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._store))
        vecs = np.stack(list(self._store.values())).astype(np.float32)
        np.savez(self.path, keys=keys, vecs=vecs)
        self._dirty = False


ADAPTER_DIR = "encoder_adapter"
"""Folder of the encoder adapter inside a run folder and inside an artifact."""


def cache_path(run_dir: str | Path, encoder_name: str) -> Path:
    """Where embeddings by ``encoder_name`` are cached inside a run folder."""
    digest = hashlib.sha1(encoder_name.encode("utf-8")).hexdigest()[:10]
    return Path(run_dir) / "cache" / f"emb-{digest}.npz"


def load_encoder_for(
    name: str, adapter: str | Path | None = None, layers: int = 0, quantization: str = ""
) -> Any:
    """The guard's encoder: base ``name`` (``embedded`` for the embedded MiniLM) cut to its first
    ``layers`` layers (0: all), with the LoRA ``adapter`` from ``finetune_encoder.py`` merged and
    the ``quantization`` applied, on the lean path, exactly as the runtime builds it. Its
    ``name`` carries all of these, so embedding caches of different encoders never mix."""
    from companion.models.encoder import EMBEDDED_ENCODER, load_encoder
    from companion.safety.encoding import guard_encoder

    encoder = load_encoder(None if name in ("embedded", EMBEDDED_ENCODER) else name)
    return guard_encoder(encoder, layers=layers, adapter=adapter, quantization=quantization)


def resolve_adapter(value: str, run_dir: str | Path) -> str:
    """``--encoder_adapter``: ``auto`` is ``{run_dir}/encoder_adapter`` when that exists (else
    none), ``none`` is the frozen encoder, anything else a folder."""
    if value == "none":
        return ""
    if value == "auto":
        folder = Path(run_dir) / ADAPTER_DIR
        return str(folder) if (folder / "adapter_config.json").is_file() else ""
    if not (Path(value) / "adapter_config.json").is_file():
        die(f"--encoder_adapter {value}: no adapter_config.json there")
    return value


def features(rows: Sequence[dict[str, Any]], role: str, cache: EmbeddingCache, policy: Any) -> Any:
    """Feature rows exactly as :class:`companion.safety.SafetyClassifier` builds them."""
    from companion.safety import ClassifyItem, encoder_inputs
    from companion.safety.features import build_features
    from companion.types import Role

    newest, windows = [], []
    for r in rows:
        item = ClassifyItem(
            r["text"], Role(role), tuple(r.get("context", ())), r.get("last_assistant", "")
        )
        n, w = encoder_inputs(item, policy)
        newest.append(n)
        windows.append(w if w is not None else n)
    windowed = role == "user" and policy.user_features == "newest+window"
    answered = role == "user" and policy.answer_features
    return build_features(
        cache.encode(newest),
        newest,
        cache.encode(windows) if windowed else None,
        windows if windowed else None,
        policy.ngram_buckets,
        policy.ngram_scale,
        [bool(r.get("last_assistant")) for r in rows] if answered else None,
    )


def cross_reader_for(policy: Any, artifact: str | Path | None) -> Any:
    """The cross-encoder of the artifact folder ``artifact`` (``None``: the shipped one) on the
    base encoder, or ``None`` when the policy reads users with the embedding head."""
    from companion.models.encoder import EMBEDDED_ENCODER, load_encoder
    from companion.safety.artifact import cross_dir
    from companion.safety.cross import load_cross_reader

    folder = cross_dir(policy, artifact)
    if folder is None:
        return None
    base = load_encoder(None if policy.encoder == EMBEDDED_ENCODER else policy.encoder)
    return load_cross_reader(base, folder, policy.cross_temperature)


def _classifier_items(
    rows: Sequence[dict[str, Any]],
    role: str,
    cache: EmbeddingCache,
    head: Any,
    policy: Any,
    cross: Any,
) -> tuple[Any, list[Any]]:
    from companion.safety import ClassifyItem, SafetyClassifier
    from companion.types import Role

    clf = SafetyClassifier(cache, head, policy, cross)
    items = [
        ClassifyItem(
            r["text"], Role(role), tuple(r.get("context", ())), r.get("last_assistant", "")
        )
        for r in rows
    ]
    return clf, items


def classifier_scores(
    rows: Sequence[dict[str, Any]],
    role: str,
    cache: EmbeddingCache,
    head: Any,
    policy: Any,
    cross: Any = None,
) -> np.ndarray:
    """Scores from the runtime :class:`SafetyClassifier` (context rule included), on cached
    embeddings; user rows through the policy's cross-encoder ``cross`` when it has one."""
    clf, items = _classifier_items(rows, role, cache, head, policy, cross)
    return np.asarray(clf.score_batch(items))


def classifier_decisions(
    rows: Sequence[dict[str, Any]],
    role: str,
    cache: EmbeddingCache,
    head: Any,
    policy: Any,
    cross: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`classifier_scores` and, from the same scores, :func:`verdict_hits` over
    ``policy.labels`` (the runtime's verdicts, as ``classify_batch`` makes them)."""
    clf, items = _classifier_items(rows, role, cache, head, policy, cross)
    scores = clf.score_batch(items)
    second = clf._second_opinions(scores, items)
    verdicts = [
        clf._verdict(row, item, second.get(i))
        for i, (row, item) in enumerate(zip(scores, items, strict=True))
    ]
    return np.asarray(scores), verdict_hits(verdicts, policy.labels)


def verdict_hits(verdicts: Sequence[Any], labels: Sequence[str]) -> np.ndarray:
    """Per verdict, 1 where it acted on the label: ``crisis`` a crisis redirect, ``medical`` a
    medical redirect, ``risk`` caught (a check-in or a crisis redirect). Policies with a second
    opinion decide more than their raw scores against thresholds, so measure decisions."""
    from companion.types import Category, Decision

    def hit(v: Any, label: str) -> bool:
        if label == "medical":
            return v.category is Category.MEDICAL
        crisis = v.category is Category.CRISIS
        return crisis and (label == "risk" or v.decision is Decision.REDIRECT)

    return np.array([[float(hit(v, lab)) for lab in labels] for v in verdicts]).reshape(
        len(verdicts), len(labels)
    )


def banner(title: str) -> None:
    """Print a section title (scripts read top to bottom; so does their output)."""
    print(f"\n== {title}", flush=True)


def die(msg: str) -> None:
    """Exit with a message on stderr."""
    print(msg, file=sys.stderr)
    raise SystemExit(2)
