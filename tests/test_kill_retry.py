"""A turn committed just before the server dies is not stored twice when the client retries
(issue 16, item 2).

Real server processes on one SQLite file and one port. The first one's store commits the turn
and then hangs (a subclass in this test's server script, not a hook in the library), so the
test knows the turn is on disk and the reply never left; the test kills it with SIGKILL. The
client's call fails with UNAVAILABLE and is retried, with the same request id, until a second
server is up on the same file; that server answers from the store. The replies name the server
whose model wrote them, so the test can tell a stored reply from a second generation.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from companion import TextDelta, TurnDone
from companion.client import CompanionClient

from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent

_SERVER = """
import sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.fakes import FakeGuard
from companion import Companion
from companion.server import ServerSettings, serve
from companion.sessions import SQLiteSessionStore
root, db, port, tag, marker = sys.argv[1:6]

class TaggedGenerator:
    context_window = 10_000
    def count_tokens(self, messages):
        return sum(len(m["content"].split()) + 4 for m in messages)
    def stream(self, messages, config, should_stop=None):
        for i, word in enumerate(f"A reply written by the {tag} server.".split()):
            yield word if i == 0 else " " + word

class CommitThenHang(SQLiteSessionStore):
    def append(self, *args, **kwargs):
        added = super().append(*args, **kwargs)  # committed (synchronous=FULL)
        Path(marker).write_text("committed")
        threading.Event().wait()  # the reply never leaves; the test kills this process
        return added

store = (CommitThenHang if marker != "-" else SQLiteSessionStore)(db)
companion = Companion(FakeGuard(), TaggedGenerator(), store)
settings = ServerSettings(port=int(port), metrics_port=None, warmup=False, grace_seconds=0)
import asyncio
asyncio.run(serve(settings, factory=lambda s: companion,
                  on_ready=lambda s: print("READY", flush=True)))
"""


def _start(db: Path, port: int, tag: str, marker: Path | None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(ROOT), str(db), str(port), tag, str(marker or "-")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until READY (or the process died)
    if line.strip() != "READY":
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.communicate()[1]}")
    return proc


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("rpc", ["send", "stream"])
def test_a_turn_committed_before_a_kill_is_stored_once_and_its_reply_comes_back(tmp_path, rpc):
    db, marker, port = tmp_path / "sessions.sqlite3", tmp_path / "committed", free_port()
    first = _start(db, port, "first", marker)
    second: subprocess.Popen[str] | None = None
    client = CompanionClient(f"127.0.0.1:{port}", timeout=30, retries=10, backoff=0.2)
    try:
        sid = client.create_session(locale="en-GB")
        outcome: list[object] = []

        def call() -> None:
            try:
                if rpc == "send":
                    outcome.append(client.send(sid, "I feel low tonight"))
                else:
                    outcome.append(list(client.stream(sid, "I feel low tonight")))
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        _wait_for(marker, 10)  # the turn is committed; its reply has not been sent
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _start(db, port, "second", None)
        caller.join(60)
        assert not caller.is_alive() and len(outcome) == 1, outcome
        result = outcome[0]
        assert not isinstance(result, BaseException), result
        if rpc == "send":
            reply = result
        else:
            assert [type(e) for e in result] == [TextDelta, TurnDone]
            reply = result[-1].reply
            assert result[0].text == reply.text
        assert reply.text == "A reply written by the first server."  # from the store
        turns = client.history(sid)
        assert [t.text for t in turns] == ["I feel low tonight", reply.text]
        assert reply.turn_index == 1
    finally:
        client.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.communicate(timeout=30)
    db_conn = sqlite3.connect(db)
    try:
        assert db_conn.execute("SELECT COUNT(*) FROM turns").fetchone() == (2,)
        assert db_conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (1,)
    finally:
        db_conn.close()
