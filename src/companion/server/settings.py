"""Server settings: one frozen dataclass, filled from a file, ``COMPANION_*`` variables and flags.

Precedence, lowest first: defaults, ``--config FILE`` (TOML or YAML), environment variables,
command-line flags. Only the entry point reads the environment (:meth:`ServerSettings.from_env`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..config import GenerationConfig, PipelineConfig

__all__ = ["ServerSettings"]

_ENV_PREFIX = "COMPANION_"


def _check(cond: bool, name: str, value: object, rule: str) -> None:
    if not cond:
        raise ValueError(f"{name}={value!r}: {rule}")


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``companion serve`` needs, validated at construction.

    Each field is also read from ``COMPANION_<FIELD>`` (upper case), e.g. ``COMPANION_PORT``;
    ``COMPANION_API_KEYS`` is a comma-separated list.

    Example:
        >>> ServerSettings.from_env(base=ServerSettings.from_file("serve.toml")).replace(port=0)
    """

    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=50051, metadata={"help": "gRPC port; 0 picks a free one"})
    metrics_port: int | None = field(
        default=9464, metadata={"help": "Prometheus /metrics HTTP port; 0 picks one; None: off"}
    )
    api_keys: tuple[str, ...] = field(
        default=(), metadata={"help": "accepted bearer keys; empty disables authentication"}
    )
    session_store: Literal["sqlite", "memory"] = "sqlite"
    db_path: str | None = field(default=None, metadata={"help": "SQLite file for sessions"})
    model: str | None = field(default=None, metadata={"help": "base model; None: embedded"})
    adapter: str | None = field(
        default="shipped",
        metadata={"help": "PEFT adapter dir; 'shipped' (default) or 'none' for the bare base"},
    )
    encoder: str | None = field(default=None, metadata={"help": "sentence encoder; None: embedded"})
    device: str | None = None
    max_new_tokens: int = field(
        default=GenerationConfig.max_new_tokens, metadata={"help": "reply length cap in tokens"}
    )
    do_sample: bool = True
    max_message_chars: int = field(default=4000, metadata={"help": "longer text is rejected"})
    max_concurrent_rpcs: int = field(
        default=64, metadata={"help": "more concurrent calls get RESOURCE_EXHAUSTED"}
    )
    grace_seconds: float = field(
        default=10.0, metadata={"help": "how long in-flight calls may finish on shutdown"}
    )
    warmup: bool = field(default=True, metadata={"help": "one short generation before SERVING"})
    log_level: str = "info"

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", self.port, "0..65535")
        _check(
            self.metrics_port is None or 0 <= self.metrics_port <= 65535,
            "metrics_port",
            self.metrics_port,
            "0..65535 or None",
        )
        _check(
            self.session_store in ("sqlite", "memory"),
            "session_store",
            self.session_store,
            "'sqlite' or 'memory'",
        )
        _check(
            self.max_concurrent_rpcs >= 1, "max_concurrent_rpcs", self.max_concurrent_rpcs, ">= 1"
        )
        _check(self.grace_seconds >= 0, "grace_seconds", self.grace_seconds, ">= 0")
        # Keys are secrets: the error names the rule, never the value.
        if any(not isinstance(k, str) or len(k) < 16 for k in self.api_keys):
            raise ValueError("api_keys: every key must be a string of at least 16 characters")
        self.pipeline_config()  # validates max_new_tokens and max_message_chars

    @property
    def address(self) -> str:
        """``host:port`` as given (the port may be 0)."""
        return f"{self.host}:{self.port}"

    def pipeline_config(self) -> PipelineConfig:
        """The library configuration these settings imply."""
        return PipelineConfig(
            max_message_chars=self.max_message_chars,
            generation=GenerationConfig(
                max_new_tokens=self.max_new_tokens, do_sample=self.do_sample
            ),
        )

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base: ServerSettings | None = None
    ) -> ServerSettings:
        """Settings from a mapping of field names (unknown names raise ValueError)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown server settings: {', '.join(unknown)}")
        values = dict(data)
        if "api_keys" in values:
            values["api_keys"] = tuple(values["api_keys"])
        return dataclasses.replace(base or cls(), **values)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], base: ServerSettings | None = None
    ) -> ServerSettings:
        """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file.

        The file holds the field names at top level, or under a ``server`` table.
        """
        p = Path(path)
        if p.suffix == ".toml":
            data: Any = tomllib.loads(p.read_text(encoding="utf-8"))
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        else:
            raise ValueError(f"config file {p}: use a .toml, .yaml or .yml file")
        if not isinstance(data, dict):
            raise ValueError(f"config file {p}: expected a table of settings")
        if isinstance(data.get("server"), dict):
            data = data["server"]
        return cls.from_mapping(data, base)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, base: ServerSettings | None = None
    ) -> ServerSettings:
        """Settings from ``COMPANION_*`` variables over ``base`` (defaults when ``None``)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, base or cls())
        return dataclasses.replace(base or cls(), **values)


def _parse(name: str, raw: str, current: ServerSettings) -> Any:
    value = getattr(current, name)
    raw = raw.strip()
    if name == "api_keys":
        return tuple(k.strip() for k in raw.split(",") if k.strip())
    if name in ("metrics_port",) and raw.lower() in ("", "none", "off"):
        return None
    if name in (
        "port",
        "metrics_port",
        "max_new_tokens",
        "max_message_chars",
        "max_concurrent_rpcs",
    ):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{_ENV_PREFIX}{name.upper()}={raw!r}: expected an integer") from None
    if name == "grace_seconds":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{_ENV_PREFIX}{name.upper()}={raw!r}: expected seconds") from None
    if isinstance(value, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{_ENV_PREFIX}{name.upper()}={raw!r}: expected true or false")
        return raw.lower() in ("1", "true", "yes", "on")
    return raw or None if name in ("db_path", "model", "adapter", "encoder", "device") else raw
