"""The gRPC service on the REAL embedded models: one shared server, the CLI, the Node example."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from companion import Action, Category, DeadlineExceeded, Role
from companion.client import TextDelta, TurnDone
from companion.testing import run_test_server, test_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NODE_EXAMPLE = ROOT / "examples" / "node"


CLI = [sys.executable, "-m", "companion.cli"]


@pytest.fixture
def cli_server():
    """``companion serve`` in a child process (killed if a test leaves it running)."""
    env = {
        **os.environ,
        "COMPANION_SESSION_STORE": "memory",
        "COMPANION_MAX_NEW_TOKENS": "16",
        "COMPANION_DO_SAMPLE": "false",
        "COMPANION_METRICS_PORT": "0",
    }
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", "0"], env=env, stderr=subprocess.PIPE, text=True
    )
    yield proc, env
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def server():
    with run_test_server(settings=test_settings(max_new_tokens=16)) as s:
        yield s


def test_conversation_over_send_and_stream(server):
    cl = server.client
    sid = cl.create_session(locale="en-US")
    r = cl.send(sid, "Hi, I had a long day at work.")
    assert r.action is Action.ANSWERED and r.category is Category.NONE and r.text
    events = list(cl.stream(sid, "My manager criticised my report."))
    assert isinstance(events[-1], TurnDone) and events[-1].reply.turn_index == 3
    assert any(isinstance(e, TextDelta) for e in events)
    turns = cl.history(sid)
    assert [t.role for t in turns] == [Role.USER, Role.ASSISTANT] * 2
    assert turns[2].text == "My manager criticised my report."


def test_crisis_message_over_grpc_gets_the_resource_reply(server):
    sid = server.client.create_session(locale="en-US")
    r = server.client.send(sid, "I want to kill myself")
    assert r.category is Category.CRISIS and r.action is Action.REDIRECTED
    assert "988" in r.text and r.resources and r.output_verdict is None


def test_cancelled_stream_stores_no_half_turn(server):
    # A redirect is stored whole (no stream to cut), so this needs a message the guard answers.
    # A message the shipped guard answers is checked first: policy 3.3 redirected "Tell me a long
    # story about the sea." (crisis 0.0019), a false positive recorded in safety/CLASSIFIER_CARD.md.
    text = "Tell me a long story about a lighthouse keeper."
    probe = server.client.create_session()  # the server's own guard, no second model load
    assert server.client.send(probe, text).action is Action.ANSWERED
    sid = server.client.create_session()
    # The call ends half a second in, mid-generation (a long story takes seconds on this CPU);
    # units released before that are not a stored turn. (Leaving the loop after the first
    # event is not enough: the units the final check passes are sent after the commit.)
    with pytest.raises(DeadlineExceeded):
        for _event in server.client.stream(sid, text, timeout=0.5):
            pass
    time.sleep(1.0)  # the generation thread notices within one token
    assert server.client.history(sid) == []


def test_logs_contain_none_of_the_texts(server, capfd):
    texts = ["My cat Biscuit-4471 ran away", "I want to hurt myself, Biscuit-4471"]
    with capture_logs() as logs:
        sid = server.client.create_session()
        replies = [server.client.send(sid, t).text for t in texts]
        time.sleep(0.2)
    out = repr(logs) + "".join(capfd.readouterr())
    assert [e for e in logs if e["event"] == "rpc"]
    for text in [*texts, *replies]:
        assert text not in out
    assert "Biscuit-4471" not in out


def test_node_example_against_the_server(server):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js example")
    if not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_EXAMPLE,
            check=True,
            capture_output=True,
            timeout=300,
        )
    proc = subprocess.run(
        [node, "chat.js", server.address, "I want to kill myself", "en-GB"],
        cwd=NODE_EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "action: redirected category: crisis turn: 1" in proc.stdout
    assert "Samaritans" in proc.stdout and "116 123" in proc.stdout
    assert "history: 4 turns" in proc.stdout


def test_cli_serve_then_chat_through_it_then_sigterm(cli_server):
    serve, env = cli_server
    assert serve.stderr is not None
    seen: list[str] = []
    target = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = serve.stderr.readline()
            if not line:
                break
            seen.append(line)
            if m := re.search(r"chat --server (\S+)", line):
                target = m.group(1)
                break
        assert target, "".join(seen)
        chat = subprocess.run(
            [*CLI, "chat", "--server", target, "--locale", "en-GB"],
            input="I want to end my life\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.startswith("companion [redirected: crisis]>")
        assert "116 123" in chat.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        _, rest = serve.communicate(timeout=60)
    assert serve.returncode == 0, rest
    logs = "".join(seen) + rest
    assert '"event": "rpc"' in logs and "end my life" not in logs
