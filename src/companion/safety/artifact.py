"""The classifier artifact: one folder with ``head.npz``, ``policy.json`` and, when the encoder
was fine-tuned, the encoder's LoRA adapter in ``encoder_adapter/``.

``policy.json`` holds everything that decides a verdict besides the weights: label set,
thresholds per role, the encoder the head was trained on, the normalisation version, the
context-window policy and a hash of the training data. ``safety/calibrate.py`` writes it; the
package ships one under ``artifacts/default`` that :meth:`SafetyClassifier.from_defaults` loads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..types import Role
from .encoding import QUANTIZATIONS
from .heads import LinearHead
from .normalize import NORMALIZATION_VERSION

__all__ = [
    "DEFAULT_ARTIFACT",
    "Policy",
    "cross_dir",
    "default_artifact_dir",
    "encoder_adapter_dir",
    "load_artifact",
    "save_artifact",
]

DEFAULT_ARTIFACT = "artifacts/default"
"""Package-relative folder of the shipped artifact."""

USER_FEATURES = ("newest", "newest+window")


@dataclass(frozen=True)
class Policy:
    """What a verdict depends on besides the head's weights.

    Args:
        policy_version: Recorded in every verdict.
        labels: Scored labels: ``crisis`` and ``medical`` (two-level policies), plus ``risk``
            (possible risk: at least a check-in) for three-level ones. A crisis score at its
            threshold redirects; else a medical score at its threshold redirects to health
            resources; else a risk score at its threshold checks in.
        thresholds: Per role (``"user"``, ``"assistant"``), the score at which each label fires.
        encoder: Base encoder the head was trained on (``embedded:all-minilm-l6-v2`` or a
            path/id).
        encoder_adapter: Folder, relative to the artifact, of the LoRA adapter fine-tuned on
            the base encoder (``safety/finetune_encoder.py``); empty: the frozen base encoder.
        encoder_layers: Keep only the base encoder's first this many transformer layers before
            the adapter is merged (0: all of them). The adapter must have been trained on them.
        encoder_quantization: ``"int8-dynamic"``: the encoder runs with int8 linear layers
            (after the adapter is merged); ``""``: fp32.
        normalization: :data:`~companion.safety.normalize.NORMALIZATION_VERSION` at training.
        context_turns: Earlier user turns joined with the newest message into the window.
        context_max_words: The window keeps the newest turns that fit in this many words.
        user_features: ``"newest+window"``: user features are the embedding of the newest
            message concatenated with the embedding of the window; ``"newest"``: newest only.
        context_rule: ``"rise"``: the window counts only when the newest message raises the
            score of the conversation (see ``SafetyClassifier.score_batch``); ``"window"``:
            the window's score is used as it is.
        ngram_buckets: Hash buckets per n-gram family added to the features (0: none).
        ngram_scale: Weight of the n-gram block relative to the unit-norm embeddings.
        answer_features: User messages that answer the companion's check-in get feature
            blocks of their own (``features.feature_blocks``); the head must have them.
        user_reader: ``"embedding"``: user messages are scored by the head on the encoder's
            embeddings, like replies; ``"cross"``: by the cross-encoder in ``cross_dir``
            (``cross.py``), whose probabilities give the user-side ``crisis``, ``medical``
            and ``risk`` scores. The head then scores replies only, on ``crisis`` and
            ``medical`` (``head_labels``).
        cross_dir: Folder, relative to the artifact, of the cross-encoder (a LoRA adapter on
            the base encoder and ``head.npz``); set exactly when ``user_reader`` is ``"cross"``.
        cross_temperature: The cross-encoder's logits are divided by it (fitted on validation).
        second_opinion: Empty, or (cross-encoder policies whose head keeps its user weights)
            the cascade of round 27: a user message whose cross-encoder crisis score reaches
            the user ``crisis`` threshold but not ``second_opinion["sure"]`` is redirected as
            crisis only when the head, reading it with its context rule, also scores crisis at
            ``second_opinion["head"]`` or above; otherwise the rest of the decision (medical,
            check-in) is the cross-encoder's.
        training: Free-form provenance (data hash, seed, sizes, hyperparameters).
    """

    policy_version: str
    labels: tuple[str, ...] = ("crisis", "medical")
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    encoder: str = "embedded:all-minilm-l6-v2"
    encoder_adapter: str = ""
    encoder_layers: int = 0
    encoder_quantization: str = ""
    normalization: str = NORMALIZATION_VERSION
    context_turns: int = 3
    context_max_words: int = 160
    user_features: str = "newest+window"
    context_rule: str = "rise"
    ngram_buckets: int = 0
    ngram_scale: float = 2.0
    answer_features: bool = False
    user_reader: str = "embedding"
    cross_dir: str = ""
    cross_temperature: float = 1.0
    second_opinion: Mapping[str, float] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def head_labels(self) -> tuple[str, ...]:
        """The labels of the embedding head (all labels, unless users are read by the
        cross-encoder: then the head scores replies on crisis and medical)."""
        return ("crisis", "medical") if self.user_reader == "cross" else self.labels

    def role_labels(self, role: Role) -> tuple[str, ...]:
        """The labels scored (and thresholded) for messages of ``role``."""
        return self.labels if role is Role.USER else self.head_labels

    def __post_init__(self) -> None:
        if self.user_features not in USER_FEATURES:
            raise ValueError(f"user_features={self.user_features!r}; expected {USER_FEATURES}")
        if self.context_rule not in ("rise", "window"):
            raise ValueError(f"context_rule={self.context_rule!r}; expected 'rise' or 'window'")
        if self.ngram_buckets < 0 or self.ngram_scale <= 0:
            raise ValueError(
                f"ngram_buckets={self.ngram_buckets}, ngram_scale={self.ngram_scale}: "
                "need buckets >= 0 and scale > 0"
            )
        unknown = set(self.labels) - {"crisis", "medical", "risk"}
        if unknown or not {"crisis", "medical"} <= set(self.labels):
            raise ValueError(f"labels={self.labels}: need crisis and medical, optionally risk")
        if self.encoder_layers < 0:
            raise ValueError(f"encoder_layers={self.encoder_layers}: need >= 0 (0: all)")
        if self.encoder_quantization not in QUANTIZATIONS:
            raise ValueError(
                f"encoder_quantization={self.encoder_quantization!r}; expected {QUANTIZATIONS}"
            )
        if self.context_turns < 0 or self.context_max_words < 1:
            raise ValueError(
                f"context_turns={self.context_turns}, context_max_words="
                f"{self.context_max_words}: need turns >= 0 and words >= 1"
            )
        if self.user_reader not in ("embedding", "cross"):
            raise ValueError(f"user_reader={self.user_reader!r}; expected 'embedding' or 'cross'")
        if (self.user_reader == "cross") != bool(self.cross_dir):
            raise ValueError("set cross_dir exactly when user_reader is 'cross'")
        if self.user_reader == "cross" and set(self.labels) != {"crisis", "medical", "risk"}:
            raise ValueError(f"labels={self.labels}: a cross-encoder policy scores all three")
        if self.cross_temperature <= 0:
            raise ValueError(f"cross_temperature={self.cross_temperature}: need > 0")
        if self.second_opinion:
            rule = dict(self.second_opinion)
            if self.user_reader != "cross" or set(rule) != {"sure", "head"}:
                raise ValueError("second_opinion: a cross-encoder policy's {'sure', 'head'}")
            if not all(0.0 <= float(v) <= 1.0 for v in rule.values()):
                raise ValueError(f"second_opinion outside [0, 1]: {rule}")
        for role in Role:
            got = self.thresholds.get(role.value, {})
            missing = set(self.role_labels(role)) - set(got)
            if missing:
                raise ValueError(f"thresholds[{role.value!r}] lacks labels {sorted(missing)}")
            bad = {k: v for k, v in got.items() if not 0.0 <= float(v) <= 1.0}
            if bad:
                raise ValueError(f"thresholds[{role.value!r}] outside [0, 1]: {bad}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["labels"] = list(self.labels)
        out["thresholds"] = {r: dict(t) for r, t in self.thresholds.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        """The inverse of :meth:`to_json`."""
        data = dict(data)
        data["labels"] = tuple(data.get("labels", ("crisis", "medical")))
        return cls(**data)


def default_artifact_dir() -> Path:
    """Folder of the artifact shipped inside the package."""
    return Path(str(resources.files(__package__).joinpath(DEFAULT_ARTIFACT)))


def save_artifact(
    directory: str | Path,
    head: LinearHead,
    policy: Policy,
    encoder_adapter: str | Path | None = None,
) -> Path:
    """Write ``head.npz`` and ``policy.json`` (and a copy of the folder ``encoder_adapter`` under
    ``policy.encoder_adapter``) into ``directory`` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if bool(encoder_adapter) != bool(policy.encoder_adapter):
        raise ValueError("pass encoder_adapter exactly when policy.encoder_adapter is set")
    if encoder_adapter:
        target = out / policy.encoder_adapter
        if Path(encoder_adapter).resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(Path(encoder_adapter) / name, target / name)
    head.save(out / "head.npz")
    (out / "policy.json").write_text(
        json.dumps(policy.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return out


def load_artifact(directory: str | Path | None = None) -> tuple[LinearHead, Policy]:
    """Read an artifact folder (default: the shipped one).

    Raises:
        ModelLoadError: the folder or one of its files is missing or malformed.
    """
    folder = default_artifact_dir() if directory is None else Path(directory)
    try:
        policy = Policy.from_json(json.loads((folder / "policy.json").read_text("utf-8")))
        head = LinearHead.load(folder / "head.npz", policy.head_labels)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"could not load safety artifact from {folder}: {exc}") from exc
    return head, policy


def encoder_adapter_dir(policy: Policy, directory: str | Path | None = None) -> Path | None:
    """The encoder adapter folder of the artifact in ``directory`` (default: the shipped one),
    or ``None`` when the policy uses the frozen base encoder.

    Raises:
        ModelLoadError: the policy names an adapter that is not in the folder.
    """
    if not policy.encoder_adapter:
        return None
    folder = (default_artifact_dir() if directory is None else Path(directory)) / (
        policy.encoder_adapter
    )
    if not (folder / "adapter_model.safetensors").is_file():
        raise ModelLoadError(f"safety artifact names encoder adapter {folder}, which is missing")
    return folder


def cross_dir(policy: Policy, directory: str | Path | None = None) -> Path | None:
    """The cross-encoder folder of the artifact in ``directory`` (default: the shipped one), or
    ``None`` when users are read by the embedding head.

    Raises:
        ModelLoadError: the policy names a cross-encoder that is not in the folder.
    """
    if policy.user_reader != "cross":
        return None
    folder = (default_artifact_dir() if directory is None else Path(directory)) / policy.cross_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "head.npz"):
        if not (folder / name).is_file():
            raise ModelLoadError(f"safety artifact's cross-encoder {folder} lacks {name}")
    return folder
