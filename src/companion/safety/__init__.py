"""Safety classification of user messages and model replies (crisis, medical advice)."""

from .artifact import Policy, encoder_adapter_dir, load_artifact, save_artifact
from .classifier import ClassifyItem, SafetyClassifier, encoder_inputs, window_text
from .heads import Head, LinearHead
from .normalize import NORMALIZATION_VERSION, normalize

__all__ = [
    "NORMALIZATION_VERSION",
    "ClassifyItem",
    "Head",
    "LinearHead",
    "Policy",
    "SafetyClassifier",
    "encoder_adapter_dir",
    "encoder_inputs",
    "load_artifact",
    "normalize",
    "save_artifact",
    "window_text",
]
