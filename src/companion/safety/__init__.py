"""Safety classification of user messages and model replies (crisis, medical advice)."""

from .classifier import ClassifyItem, SafetyClassifier
from .heads import ExemplarHead, Head

__all__ = ["ClassifyItem", "ExemplarHead", "Head", "SafetyClassifier"]
