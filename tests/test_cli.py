"""The ``companion`` command's flags and errors (no models: start-up fails before they load)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import companion
from companion import Action, Category, Reply, TextDelta, TurnDone, Withheld
from companion.cli import build_parser, main
from companion.server import ServerSettings

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "companion.cli"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "COMPANION_SESSION_STORE": "memory",
            **env,
        },
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A local port another process is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"companion {companion.__version__}\n"


def test_chat_and_serve_share_one_reply_length_default():
    args = build_parser().parse_args(["chat"])
    assert args.max_new_tokens == ServerSettings().max_new_tokens == 120
    chat_help = _run("chat", "--help").stdout
    assert "--max-new-tokens" in chat_help and "reply length cap in tokens" in chat_help


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["serve", "--log-level", "error"], "error"),
        (["--log-level", "debug", "serve"], "debug"),
        (["serve"], None),
    ],
)
def test_serve_log_level_flag_either_side_of_the_command(argv, level):
    assert build_parser().parse_args(argv).log_level == level


def test_bad_log_level_is_refused():
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--log-level", "loud"])
    assert exit_.value.code == 2


def test_serve_log_level_flag_is_applied():
    bad_encoder = str(ROOT / "no-such-encoder")  # the load fails fast, after the bind
    quiet = _run("serve", "--port", "0", "--metrics-port", "0", "--log-level", "error",
                 COMPANION_ENCODER=bad_encoder)  # fmt: skip
    loud = _run("serve", "--port", "0", "--metrics-port", "0", "--log-level", "info",
                COMPANION_ENCODER=bad_encoder, COMPANION_LOG_LEVEL="error")  # fmt: skip
    for proc, started in ((quiet, False), (loud, True)):
        assert proc.returncode == 1, proc.stderr
        events = [json.loads(ln)["event"] for ln in proc.stderr.splitlines() if ln[:1] == "{"]
        assert "model_load_failed" in events and ("server_started" in events) is started


def test_serve_names_an_unknown_companion_variable_and_not_its_value():
    bad_encoder = str(ROOT / "no-such-encoder")
    proc = _run("serve", "--port", "0", "--metrics-port", "0", COMPANION_ENCODER=bad_encoder,
                COMPANION_MAX_NEW_TOKEN="77-typo-value")  # fmt: skip
    assert "ignoring COMPANION_MAX_NEW_TOKEN: not a setting" in proc.stderr
    assert "77-typo-value" not in proc.stderr


@pytest.mark.parametrize("which", ["metrics", "grpc"])
def test_busy_port_is_named_in_one_line_and_exits_non_zero(busy_port, which):
    ports = (
        ["--port", "0", "--metrics-port", str(busy_port)]
        if which == "metrics"
        else ["--port", str(busy_port), "--metrics-port", "0"]
    )
    proc = _run("serve", *ports)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    # gRPC core writes its own line about a failed bind; the metrics case has only ours.
    assert len(lines) == (1 if which == "metrics" else 2), proc.stderr
    lines = lines[-1:]
    start = {"metrics": "cannot serve metrics on", "grpc": "cannot listen for gRPC on"}[which]
    assert lines[0].startswith(f"companion serve: {start} 127.0.0.1:{busy_port}: ")


def _reply(text, action=Action.ANSWERED, category=Category.NONE):
    return Reply(text=text, category=category, action=action)


def test_chat_streams_checked_units_and_marks_a_withheld_reply(monkeypatch, capsys):
    from companion.cli import _chat_loop

    scripts = {
        "hi": [TextDelta("Hello there. "), TextDelta("How are you?"), TurnDone(_reply("x"))],
        "dose": [
            TextDelta("Sure. "),
            Withheld(Category.MEDICAL),
            TurnDone(_reply("Ask a pharmacist.", Action.REDIRECTED, Category.MEDICAL), True),
        ],
        "bad": [TurnDone(_reply("Call 988.", Action.REDIRECTED, Category.CRISIS))],
    }
    lines = iter(["hi", "dose", "bad"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    _chat_loop(lambda text: iter(scripts[text]))
    out = capsys.readouterr().out
    assert out.startswith("companion> Hello there. How are you?\n")
    assert "companion> Sure. \n[withheld by the reply check]\n" in out
    assert "companion [redirected: medical]> Ask a pharmacist." in out
    assert "companion [redirected: crisis]> Call 988." in out


@pytest.mark.parametrize("leave", ["/quit", " /exit "])
def test_chat_leaves_on_quit_without_sending_it(monkeypatch, capsys, leave):
    from companion.cli import _chat_loop

    lines = iter(["hi", leave, "never sent"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    sent = []

    def stream(text):
        sent.append(text)
        return iter([TurnDone(_reply("Hello."))])

    _chat_loop(stream)
    assert sent == ["hi"]
    assert "companion> Hello." in capsys.readouterr().out
