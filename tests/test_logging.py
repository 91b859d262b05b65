"""Logging: silent as a library, configured output from the ``companion`` command only."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog

from companion._logging import configure_logging, get_logger

ROOT = Path(__file__).resolve().parents[1]
SECRET = "zebra-quartz-7731"

# An application that embeds the library: fakes, a turn through the pipeline, a failing guard
# (an error line), and a real gRPC server with one call (server and rpc lines).
EMBED = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(ROOT)!r})
    {{setup}}
    from companion import Companion
    from companion.sessions import InMemorySessionStore
    from companion.testing import run_test_server, test_settings
    from companion.types import Role
    from tests.fakes import FakeGenerator, FakeGuard

    c = Companion(FakeGuard(), FakeGenerator(["I hear you {SECRET}"] * 3), InMemorySessionStore())
    c.start_session().send("my secret is {SECRET}")
    broken = Companion(FakeGuard(raise_on=Role.USER), FakeGenerator(), InMemorySessionStore())
    broken.start_session().send("hello {SECRET}")  # guard_failed is logged at error level
    with run_test_server(c, settings=test_settings()) as server:
        server.client.send(server.client.create_session(), "again {SECRET}")
    print("done")
    """
)


def _embed(setup: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", EMBED.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_embedded_library_prints_no_logs_when_logging_is_unconfigured():
    proc = _embed()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    for event in ("turn", "guard_failed", "server_started", "serving", "rpc", "session_id"):
        assert event not in proc.stderr, proc.stderr


def test_an_application_that_configures_logging_gets_our_lines_without_text():
    proc = _embed(
        "import logging; logging.basicConfig(level=logging.INFO, stream=sys.stderr,"
        " format='%(levelname)s %(name)s %(message)s')"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    lines = proc.stderr.splitlines()
    assert any(ln.startswith("INFO companion.pipeline event=turn ") for ln in lines)
    assert any(ln.startswith("ERROR companion.pipeline event=guard_failed ") for ln in lines)
    assert any(ln.startswith("INFO companion.server event=rpc ") for ln in lines)
    assert SECRET not in proc.stderr and "I hear you" not in proc.stderr


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_configure_logging_writes_json_at_the_level_given(restore_logging, capsys):
    configure_logging("warning", json=True)
    log = get_logger("companion.test")
    log.info("hidden", n=1)
    log.warning("shown", n=2)
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["level"], e["n"]) for e in lines] == [("shown", "warning", 2)]
    assert lines[0]["logger"] == "companion.test" and "timestamp" in lines[0]


def test_configure_logging_rejects_unknown_levels():
    with pytest.raises(ValueError, match="log level 'loud'"):
        configure_logging("loud")


def test_serve_logs_json_at_the_level_given_before_the_command():
    # info (server_started) and a level given after `serve`: tests/test_cli.py.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "COMPANION_SESSION_STORE": "memory",
        "COMPANION_ENCODER": str(ROOT / "no-such-encoder"),  # fails fast, after the bind
    }
    cmd = [sys.executable, "-m", "companion.cli", "--log-level", "error", "serve"]
    proc = subprocess.run(
        [*cmd, "--port", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    events = [json.loads(ln)["event"] for ln in proc.stderr.splitlines() if ln.startswith("{")]
    assert "model_load_failed" in events
    assert "server_started" not in events  # info
    assert proc.stdout == ""
