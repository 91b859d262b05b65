"""Server settings: defaults, files, ``COMPANION_*`` variables, validation."""

from __future__ import annotations

import pytest

from companion.server import ServerSettings

KEY = "k" * 16


def test_defaults_listen_locally():
    s = ServerSettings()
    assert s.address == "127.0.0.1:50051" and s.api_keys == () and s.metrics_port == 9464
    assert s.pipeline_config().max_message_chars == 4000
    assert s.log_level == "info" and s.max_new_tokens == 120


def test_env_overrides_file(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('[server]\nport = 6000\nsession_store = "memory"\nmax_new_tokens = 64\n')
    env = {
        "COMPANION_PORT": "7000",
        "COMPANION_API_KEYS": KEY + ", " + "j" * 16,
        "COMPANION_METRICS_PORT": "off",
        "COMPANION_WARMUP": "false",
        "UNRELATED": "x",
    }
    s = ServerSettings.from_env(env, base=ServerSettings.from_file(toml))
    assert s.port == 7000 and s.session_store == "memory" and s.max_new_tokens == 64
    assert s.api_keys == (KEY, "j" * 16) and s.metrics_port is None and s.warmup is False
    assert s.replace(port=1, host=None).port == 1  # flags win; None means "not given"


def test_env_values_are_typed(monkeypatch):
    monkeypatch.setenv("COMPANION_PORT", " 7001 ")
    monkeypatch.setenv("COMPANION_DO_SAMPLE", "no")
    monkeypatch.setenv("COMPANION_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("COMPANION_DB_PATH", "")
    monkeypatch.setenv("COMPANION_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("COMPANION_METRICS_PORT", "9999")
    s = ServerSettings.from_env()  # os.environ
    assert (s.port, s.do_sample, s.grace_seconds, s.db_path) == (7001, False, 2.5, None)
    assert s.log_level == "warning" and s.metrics_port == 9999


def test_construction_reads_no_environment(monkeypatch):
    monkeypatch.setenv("COMPANION_PORT", "7002")
    monkeypatch.setenv("COMPANION_API_KEYS", KEY)
    assert ServerSettings().port == 50051 and ServerSettings(host="::").api_keys == ()


def test_yaml_file(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("host: 0.0.0.0\napi_keys: [abcdefghijklmnopqrst]\ngrace_seconds: 3\n")
    s = ServerSettings.from_file(path)
    assert s.host == "0.0.0.0" and s.api_keys == ("abcdefghijklmnopqrst",)
    assert s.grace_seconds == 3


def test_settings_are_frozen():
    with pytest.raises(ValueError, match="frozen"):
        ServerSettings().port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"port": 70000}, r"port\n  Input should be less than or equal to 65535"),
        (
            {"session_store": "postgres"},
            "session_store\n  Input should be 'sqlite', 'memory' or 'redis'",
        ),
        ({"max_new_tokens": 0}, "max_new_tokens=0: 1..4096"),
        ({"api_keys": ("short",)}, "at least 16"),
        ({"log_level": "loud"}, "log_level\n  Input should be 'debug'"),
        ({"metrics_port": -1}, "metrics_port"),
        (
            {"generation_static_cache": True, "generation_batch_size": 4},
            "generation_static_cache needs generation_batch_size=1",
        ),
        (
            {"generation_dtype": "float16"},
            "generation_dtype\n  Input should be 'auto', 'float32' or 'bfloat16'",
        ),
    ],
)
def test_bad_values_are_named(changes, match):
    with pytest.raises(ValueError, match=match):
        ServerSettings(**changes)


def test_bad_key_value_is_not_echoed(tmp_path):
    with pytest.raises(ValueError) as direct:
        ServerSettings(api_keys=("secret-but-short", "tiny"))
    with pytest.raises(ValueError) as from_env:
        ServerSettings.from_env({"COMPANION_API_KEYS": f"{KEY},tinysecret"})
    bad = tmp_path / "s.toml"
    bad.write_text('api_keys = "not-a-list-secret"\nport = "nope-secret"\n')
    with pytest.raises(ValueError) as from_file:
        ServerSettings.from_file(bad)
    assert str(from_env.value) == (
        "api_keys (COMPANION_API_KEYS): every key must be a string of at least 16 characters"
    )
    for info in (direct, from_env, from_file):
        assert "tiny" not in str(info.value) and "secret" not in str(info.value)
    assert "port (" + str(bad) + "): Input should be a valid integer" in str(from_file.value)
    assert repr(ServerSettings(api_keys=(KEY,))).count(KEY) == 0  # not in logs or tracebacks


def test_unknown_names_and_bad_env_values(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text("prot = 1\n")
    with pytest.raises(ValueError, match=r"^prot \(.*s\.toml\): unknown server setting$"):
        ServerSettings.from_file(bad)
    with pytest.raises(ValueError, match=r"^port \(COMPANION_PORT\): Input should be a valid"):
        ServerSettings.from_env({"COMPANION_PORT": "abc"})
    with pytest.raises(ValueError, match=r"\.toml, \.yaml"):
        ServerSettings.from_file(tmp_path / "s.ini")
    with pytest.raises(ValueError, match="unknown server setting"):
        ServerSettings.from_mapping({"prot": 1})
    with pytest.raises(ValueError, match="max_concurrent_rpcs: Input should be greater"):
        ServerSettings().replace(max_concurrent_rpcs=0)


def test_missing_or_broken_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.toml not found"):
        ServerSettings.from_file(tmp_path / "missing.toml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="not a table of settings"):
        ServerSettings.from_file(broken)
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("port: 1\napi_keys: [secret-key-0123456789\n")
    with pytest.raises(
        ValueError, match=r"not a table of settings \(line \d+, column \d+\)$"
    ) as info:
        ServerSettings.from_file(leaky)
    assert "secret" not in str(info.value)
    toml = tmp_path / "broken.toml"
    toml.write_text("port = = 1\n")
    with pytest.raises(ValueError, match="not a table of settings"):
        ServerSettings.from_file(toml)


def test_torch_threads_default_to_half_the_cpus_and_are_validated(monkeypatch):
    from companion.models._threads import default_torch_threads, set_torch_threads

    assert [default_torch_threads(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 8]
    monkeypatch.setenv("COMPANION_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="torch_threads"):
        ServerSettings.from_env()
    monkeypatch.setenv("COMPANION_TORCH_THREADS", "1")
    assert ServerSettings.from_env().torch_threads == 1
    import torch

    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_unknown_companion_variables_are_named_never_their_values():
    from companion.server.settings import unknown_env_names

    env = {
        "COMPANION_PROT": "secret-looking-value",
        "companion_max_new_tokens": "12",  # a setting, any case
        "COMPANION_CACHE_DIR": "/tmp/x",  # read elsewhere
        "COMPANION_API_KEY": "k",
        "OTHER": "1",
        "COMPANION_REDIS_URLS": "redis://x",
    }
    assert unknown_env_names(env) == ["COMPANION_PROT", "COMPANION_REDIS_URLS"]
    assert unknown_env_names({"COMPANION_PORT": "1"}) == []
