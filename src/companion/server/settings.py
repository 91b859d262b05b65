"""Server settings: one frozen pydantic-settings model, filled from a file, ``COMPANION_*``
variables and flags.

Precedence, lowest first: defaults, ``--config FILE`` (TOML or YAML), environment variables,
command-line flags. Constructing :class:`ServerSettings` reads nothing: only the entry point
reads the environment (:meth:`ServerSettings.from_env`) and the file
(:meth:`ServerSettings.from_file`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from ..config import GenerationConfig, PipelineConfig
from ..sessions.redis import DEFAULT_REDIS_URL, DEFAULT_TTL_SECONDS
from ._generator_settings import GeneratorSettings
from ._settings_build import build, where

__all__ = ["ServerSettings"]

_ENV_PREFIX = "COMPANION_"
_TLS_FILES = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
_OPTIONAL_PATHS = ("db_path", "model", "adapter", "encoder", "device", *_TLS_FILES)
_OFF = ("", "none", "off")


class ServerSettings(GeneratorSettings):
    """Everything ``companion serve`` needs, validated at construction.

    The generator fields (``generator``, ``openai_*``) come from
    :class:`~companion.server._generator_settings.GeneratorSettings`.

    Each field is also read from ``COMPANION_<FIELD>`` (upper case) by :meth:`from_env`, e.g.
    ``COMPANION_PORT``; ``COMPANION_API_KEYS`` is a comma-separated list and
    ``COMPANION_METRICS_PORT=off`` turns the metrics endpoint off (``off`` also turns off
    ``key_rate_limit`` and ``auth_failure_rate``). A bad value raises
    ``ValueError`` naming the field (and the variable or file it came from), never the value
    itself: values can be API keys.

    Example:
        >>> ServerSettings.from_env(base=ServerSettings.from_file("serve.toml")).replace(port=0)
    """

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
        str_strip_whitespace=True,
    )

    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int | None = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Prometheus /metrics HTTP port; 0 picks one; None (or 'off'): off",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="interface of the /metrics endpoint (loopback unless you set it)",
    )
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="accepted bearer keys; empty disables authentication",
        repr=False,  # secrets
    )
    tls_cert_file: str | None = Field(
        default=None, description="PEM certificate chain of the server; with tls_key_file: TLS"
    )
    tls_key_file: str | None = Field(default=None, description="PEM private key of the server")
    tls_client_ca_file: str | None = Field(
        default=None,
        description="PEM CA certificate(s): clients must present a certificate it signed"
        " (mutual TLS)",
    )
    insecure: bool = Field(
        default=False,
        description="allow a non-loopback host without TLS or without API keys (TLS ends in"
        " front of the server: an ingress, load balancer or mesh)",
    )
    key_rate_limit: float | None = Field(
        default=None,
        gt=0,
        description="calls per second each API key may make (token bucket); None: no limit",
    )
    key_rate_burst: int = Field(
        default=20, ge=1, description="calls a key may make at once above key_rate_limit"
    )
    auth_failure_rate: float | None = Field(
        default=1.0,
        gt=0,
        description="failed authentications per second allowed from one client address"
        " (token bucket); past it, calls from that address get RESOURCE_EXHAUSTED; None: off",
    )
    auth_failure_burst: int = Field(
        default=10, ge=1, description="failed authentications allowed at once per address"
    )
    session_store: Literal["sqlite", "memory", "redis"] = "sqlite"
    db_path: str | None = Field(default=None, description="SQLite file for sessions")
    redis_url: str = Field(
        default=DEFAULT_REDIS_URL,
        description="Redis for session_store='redis': redis://[:password@]host:port/db,"
        " rediss://... or unix:///path",
        repr=False,  # may hold a password
    )
    session_max_age_seconds: int = Field(
        default=DEFAULT_TTL_SECONDS,
        ge=1,
        description="retention: a session and all its turns are erased this long after it was"
        " created (30 days), by the purge task (SQLite, memory) or as its Redis keys expire",
    )
    purge_interval_seconds: float = Field(
        default=600.0, gt=0, description="how often the server erases expired sessions"
    )
    max_turns_per_session: int | None = Field(
        default=2000,
        ge=2,
        description="stored turns a session may hold (a message and its reply are two); past"
        " it a turn gets FAILED_PRECONDITION; None (or 'off'): no limit",
    )
    max_sessions_per_key: int | None = Field(
        default=10_000,
        ge=1,
        description="sessions one API key (or, without keys, the whole server) may hold; the"
        " next CreateSession gets RESOURCE_EXHAUSTED; None (or 'off'): no limit",
    )
    redis_connect_timeout: float = Field(
        default=2.0, gt=0, description="seconds to wait for a Redis connection"
    )
    redis_timeout: float = Field(
        default=2.0, gt=0, description="seconds to wait for each Redis reply"
    )
    redis_lock_seconds: float = Field(
        default=10.0,
        gt=0,
        description="lease of a turn's session lock, renewed while the turn runs: how long a"
        " replica that died mid-turn keeps its session locked",
    )
    redis_lock_wait_seconds: float = Field(
        default=30.0, gt=0, description="how long a turn waits for another turn of its session"
    )
    model: str | None = Field(default=None, description="base model; None: embedded")
    adapter: str | None = Field(
        default="shipped",
        description="PEFT adapter dir; 'shipped' (default) or 'none' for the bare base",
    )
    encoder: str | None = Field(default=None, description="sentence encoder; None: embedded")
    device: str | None = None
    max_new_tokens: int = Field(
        default=GenerationConfig.max_new_tokens, description="reply length cap in tokens"
    )
    do_sample: bool = True
    max_message_chars: int = Field(default=4000, description="longer text is rejected")
    max_concurrent_rpcs: int = Field(
        default=64,
        ge=1,
        description="more concurrent calls of the companion service get RESOURCE_EXHAUSTED"
        " (health and reflection are never refused)",
    )
    generation_queue_depth: int = Field(
        default=8,
        ge=0,
        description="turns that may wait for the model; the next gets RESOURCE_EXHAUSTED at"
        " once, with a retry-after-ms hint",
    )
    generation_batch_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="turns that generate at once, batched on the local model (1: one at a time)",
    )
    generation_static_cache: bool = Field(
        default=False,
        description="static key/value cache; on CUDA transformers compiles the decoding step"
        " (needs generation_batch_size=1)",
    )
    generation_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="the local model's weights: auto is bf16 on CUDA and fp32 on a CPU;"
        " bfloat16 on a CPU with AVX-512 BF16 makes batched steps nearly as cheap as one row",
    )
    guard_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a safety check that takes longer fails closed (the resource message)",
    )
    generation_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="a reply the model has not finished by then gives UNAVAILABLE, nothing stored",
    )
    grace_seconds: float = Field(
        default=10.0, ge=0, description="how long in-flight calls may finish on shutdown"
    )
    warmup: bool = Field(default=True, description="one short generation before SERVING")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads for the guard and the model; None: half the CPUs",
    )
    guard_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch",
        description="the guard encoder's runtime: torch, or ONNX Runtime fp32 / int8 (needs"
        " pip install 'companion[onnx]'; docs/benchmarks.md has speed and agreement)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level of `companion serve`"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Construction takes its arguments only: a library, a test or test_settings() must not
        # pick up COMPANION_* variables of the shell. from_env/from_file read them on purpose.
        return (init_settings,)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):  # COMPANION_API_KEYS=key1,key2
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("api_keys")
    @classmethod
    def _long_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Keys are secrets: the error names the rule, never the value.
        if any(len(k) < 16 for k in value):
            raise ValueError("every key must be a string of at least 16 characters")
        return value

    @field_validator(
        "metrics_port",
        "key_rate_limit",
        "auth_failure_rate",
        "max_turns_per_session",
        "max_sessions_per_key",
        mode="before",
    )
    @classmethod
    def _off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _OFF:
            return None
        return value

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.generation_static_cache and self.generation_batch_size > 1:
            raise ValueError("generation_static_cache needs generation_batch_size=1")
        return self

    @field_validator(*_OPTIONAL_PATHS, mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        # The URL may hold a password: the error names the rule, never the value.
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("max_new_tokens")
    @classmethod
    def _generation_limit(cls, value: int) -> int:
        GenerationConfig(max_new_tokens=value)  # the library's own rule and message
        return value

    @field_validator("max_message_chars")
    @classmethod
    def _message_limit(cls, value: int) -> int:
        PipelineConfig(max_message_chars=value)
        return value

    @property
    def address(self) -> str:
        """``host:port`` as given (the port may be 0)."""
        return f"{self.host}:{self.port}"

    @property
    def tls(self) -> Literal["off", "tls", "mtls"]:
        """How the gRPC port is served: plaintext, TLS, or mutual TLS (client certificates)."""
        if self.tls_cert_file is None:
            return "off"
        return "mtls" if self.tls_client_ca_file is not None else "tls"

    def pipeline_config(self) -> PipelineConfig:
        """The library configuration these settings imply."""
        return PipelineConfig(
            max_message_chars=self.max_message_chars,
            guard_timeout_seconds=self.guard_timeout_seconds,
            generation_timeout_seconds=self.generation_timeout_seconds,
            max_session_age_seconds=self.session_max_age_seconds,
            max_turns_per_session=self.max_turns_per_session,
            max_sessions_per_owner=self.max_sessions_per_key,
            generation=GenerationConfig(
                max_new_tokens=self.max_new_tokens, do_sample=self.do_sample
            ),
        )

    def replace(self, **changes: Any) -> ServerSettings:
        """A validated copy with ``changes`` applied (``None`` values are ignored)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return build(type(self), self, given, {})

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base: ServerSettings | None = None
    ) -> ServerSettings:
        """Settings from a mapping of field names over ``base`` (unknown names raise
        ValueError)."""
        return build(cls, base, data, {})

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], base: ServerSettings | None = None
    ) -> ServerSettings:
        """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file over ``base``.

        The file holds the field names at top level, or under a ``server`` table.

        Raises:
            OSError: the file cannot be read.
            ValueError: not a TOML or YAML file, not a table, or a bad or unknown setting.
        """
        p = Path(path)
        # pydantic-settings' file sources skip a missing file and drop unknown keys without a
        # word; a typo in a --config path or a setting name must be an error, so we check the
        # file ourselves and validate the whole table (extra="forbid").
        if p.suffix not in (".toml", ".yaml", ".yml"):
            raise ValueError(f"config file {p}: use a .toml, .yaml or .yml file")
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found")
        try:
            data: Any = (
                TomlConfigSettingsSource(cls, toml_file=p).toml_data
                if p.suffix == ".toml"
                else YamlConfigSettingsSource(
                    cls, yaml_file=p, yaml_file_encoding="utf-8"
                ).yaml_data
            )
        except OSError:
            raise
        except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError, a top-level list
            raise ValueError(f"config file {p}: not a table of settings{where(exc)}") from None
        if isinstance(data.get("server"), dict):
            data = data["server"]
        return build(cls, base, data, dict.fromkeys(data, str(p)))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, base: ServerSettings | None = None
    ) -> ServerSettings:
        """Settings from ``COMPANION_*`` variables (``os.environ`` by default) over ``base``."""
        source = EnvSettingsSource(cls, case_sensitive=False, env_prefix=_ENV_PREFIX)
        if environ is not None:
            source.env_vars = {k.lower(): v for k, v in environ.items()}
        values = source()
        origin = {name: _ENV_PREFIX + name.upper() for name in values}
        return build(cls, base, values, origin)


OTHER_ENV = frozenset({"COMPANION_API_KEY", "COMPANION_CACHE_DIR", "COMPANION_DATA_DIR"})
"""``COMPANION_*`` variables read outside the settings (the clients' key, the model cache, the
resource data folder)."""


def unknown_env_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """``COMPANION_*`` names in ``environ`` (``os.environ`` by default) that are neither a
    setting nor one of :data:`OTHER_ENV`: most often a typo, which would otherwise leave the
    default in force without a word. Names only, sorted; values are never read."""
    env = os.environ if environ is None else environ
    known = {_ENV_PREFIX + name.upper() for name in ServerSettings.model_fields} | OTHER_ENV
    return sorted(k for k in env if k.upper().startswith(_ENV_PREFIX) and k.upper() not in known)
