"""Server settings: defaults, files, ``COMPANION_*`` variables, validation."""

from __future__ import annotations

import pytest

from companion.server import ServerSettings


def test_defaults_listen_locally():
    s = ServerSettings()
    assert s.address == "127.0.0.1:50051" and s.api_keys == () and s.metrics_port == 9464
    assert s.pipeline_config().max_message_chars == 4000


def test_env_overrides_file(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('[server]\nport = 6000\nsession_store = "memory"\nmax_new_tokens = 64\n')
    env = {
        "COMPANION_PORT": "7000",
        "COMPANION_API_KEYS": "k" * 16 + ", " + "j" * 16,
        "COMPANION_METRICS_PORT": "off",
        "COMPANION_WARMUP": "false",
        "UNRELATED": "x",
    }
    s = ServerSettings.from_env(env, base=ServerSettings.from_file(toml))
    assert s.port == 7000 and s.session_store == "memory" and s.max_new_tokens == 64
    assert s.api_keys == ("k" * 16, "j" * 16) and s.metrics_port is None and s.warmup is False
    assert s.replace(port=1, host=None).port == 1  # flags win; None means "not given"


def test_yaml_file(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("host: 0.0.0.0\napi_keys: [abcdefghijklmnopqrst]\ngrace_seconds: 3\n")
    s = ServerSettings.from_file(path)
    assert s.host == "0.0.0.0" and s.api_keys == ("abcdefghijklmnopqrst",)
    assert s.grace_seconds == 3


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"port": 70000}, "port=70000"),
        ({"session_store": "redis"}, "session_store='redis'"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"api_keys": ("short",)}, "at least 16"),
    ],
)
def test_bad_values_are_named(changes, match):
    with pytest.raises(ValueError, match=match):
        ServerSettings(**changes)


def test_bad_key_value_is_not_echoed():
    with pytest.raises(ValueError) as info:
        ServerSettings(api_keys=("secret-but-short",)[:1] * 1 + ("tiny",))
    assert "tiny" not in str(info.value)


def test_unknown_names_and_bad_env_values(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown server settings: prot"):
        ServerSettings.from_file(bad)
    with pytest.raises(ValueError, match="COMPANION_PORT='abc'"):
        ServerSettings.from_env({"COMPANION_PORT": "abc"})
    with pytest.raises(ValueError, match=r"\.toml, \.yaml"):
        ServerSettings.from_file(tmp_path / "s.ini")
