"""The generator settings of :class:`~companion.server.ServerSettings`: the local model, or an
OpenAI-compatible server (``generator = "openai"``). A base class of its own, so the settings
module stays readable; every field is a ``ServerSettings`` field like the others
(``COMPANION_GENERATOR``, ``COMPANION_OPENAI_BASE_URL``...)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

__all__ = ["GeneratorSettings"]

_OPTIONAL = (
    "openai_base_url",
    "openai_model",
    "openai_api_key",
    "openai_api_key_file",
    "openai_tokenizer",
)


class GeneratorSettings(BaseSettings):
    """Which generator answers, and how companion reaches a remote one.

    ``openai_api_key`` (``COMPANION_OPENAI_API_KEY``) and the contents of
    ``openai_api_key_file`` are secrets: left out of the repr, never logged, never in an error.
    """

    generator: Literal["local", "openai"] = Field(
        default="local",
        description="'local': the model runs in this process; 'openai': an OpenAI-compatible"
        " server at openai_base_url generates (the local model is not loaded)",
    )
    openai_base_url: str | None = Field(
        default=None,
        description="API root of the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1",
        repr=False,  # may hold user info
    )
    openai_model: str | None = Field(
        default=None, description="model name sent in every request (as the server names it)"
    )
    openai_api_key: str | None = Field(
        default=None, description="bearer key for the server; never logged", repr=False
    )
    openai_api_key_file: str | None = Field(
        default=None, description="a file holding the key instead (a mounted secret)"
    )
    openai_tokenizer: str | None = Field(
        default=None,
        description="tokenizer for context trimming: 'embedded' or a local directory;"
        " None: estimated as characters / 4 (companion.models.estimate_tokens)",
    )
    openai_context_window: int | None = Field(
        default=None,
        ge=64,
        description="tokens of prompt plus reply; None: the tokenizer directory's config.json,"
        " else 4096",
    )
    openai_connect_timeout: float = Field(
        default=5.0, gt=0, description="seconds to wait for a connection"
    )
    openai_read_timeout: float = Field(
        default=60.0, gt=0, description="seconds to wait for the response, then for each chunk"
    )
    openai_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="retries on connection errors; never after a read timeout, an HTTP error"
        " or the first streamed token",
    )
    openai_repetition_penalty: bool = Field(
        default=False,
        description="send repetition_penalty in the request body (vLLM, llama.cpp's server and"
        " TGI take it; transformers serve and the OpenAI API refuse it)",
    )

    @field_validator(*_OPTIONAL, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("openai_base_url")
    @classmethod
    def _http_scheme(cls, value: str | None) -> str | None:
        # The URL may hold user info: the error names the rule, never the value.
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _openai_needs_a_server(self) -> GeneratorSettings:
        if self.generator == "openai" and (not self.openai_base_url or not self.openai_model):
            raise ValueError("generator='openai' needs openai_base_url and openai_model")
        if self.openai_api_key is not None and self.openai_api_key_file is not None:
            raise ValueError("openai_api_key and openai_api_key_file: give one or neither")
        return self
