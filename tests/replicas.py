"""Real server processes on one Redis, for the replica tests (issue 17, item 2).

:func:`start_replica` runs ``companion serve`` in a process of its own, either the real command
on the embedded models (``kind="real"``) or ``tests/replica_server.py``, which runs the same
``serve()`` on fake models (``kind="fake"``): :class:`~tests.fakes.FakeGuard` and a generator
whose reply names the context it was given (:func:`context_digest`), so a test can tell from
the reply alone which turns reached the prompt. Both read their settings from ``COMPANION_*``
variables, as a deployed replica does, and write JSON log lines to a file the test reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from companion import Action, Turn
from companion.client import CompanionClient

from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = Path(__file__).resolve().parent / "replica_server.py"


def context_digest(messages: Sequence[Mapping[str, str]]) -> str:
    """12 hex characters naming a list of chat messages (role and content, in order)."""
    raw = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def echo_reply(history: Sequence[Mapping[str, str]]) -> str:
    """What the fake replica's generator replies, given the history part of its prompt."""
    return f"context {len(history)} {context_digest(history)}"


def expected_echo(stored_before: Sequence[Turn]) -> str:
    """The fake reply of a turn whose prompt held every model-visible turn stored before it
    (answered exchanges only, as ``companion._triage.model_history`` keeps them)."""
    seen = [t for t in stored_before if t.action is Action.ANSWERED]
    return echo_reply([{"role": t.role.value, "content": t.text} for t in seen])


class Replica:
    """One server process: its address, a client factory, its log, and SIGKILL."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name, self.proc, self.port, self.log = name, proc, port, log
        self.address = f"127.0.0.1:{port}"
        self._clients: list[CompanionClient] = []

    def client(self, **kwargs: Any) -> CompanionClient:
        """A client of this replica (closed by :meth:`stop`); ``timeout=60`` unless given."""
        kwargs.setdefault("timeout", 60)
        cl = CompanionClient(self.address, **kwargs)
        self._clients.append(cl)
        return cl

    def wait_ready(self, timeout: float) -> None:
        """Wait for health SERVING; fail with the end of the log if the process died."""
        probe = CompanionClient(self.address)
        try:
            probe.wait_ready(timeout)
        except Exception as exc:
            raise AssertionError(f"replica {self.name} not ready: {self.tail()}") from exc
        finally:
            probe.close()

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines written so far (only those named ``event`` if given)."""
        lines = self.log.read_text(errors="replace").splitlines()
        rows = [json.loads(ln) for ln in lines if ln.startswith("{")]
        return [r for r in rows if event is None or r.get("event") == event]

    def tail(self, chars: int = 3000) -> str:
        """The end of the log (what a test failure should show)."""
        return self.log.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """``kill -9``: no shutdown, no goodbye to Redis or the clients."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """Close its clients; kill it if it still runs."""
        for cl in self._clients:
            cl.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def start_replica(
    kind: Literal["real", "fake"],
    name: str,
    redis_url: str,
    workdir: Path,
    **settings: str,
) -> Replica:
    """Start a replica on ``redis_url`` (it may still be loading: call ``wait_ready``).

    ``settings`` are extra ``COMPANION_*`` variables, named without the prefix
    (``max_new_tokens="8"``); the fake server also reads ``COMPANION_TEST_TOKEN_SECONDS``
    (a pause before each generated word, so a turn takes a while) and
    ``COMPANION_TEST_MARKER_DIR`` (it touches ``generating-<n>`` there as its n-th turn starts).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "COMPANION_SESSION_STORE": "redis",
        "COMPANION_REDIS_URL": redis_url,
        "COMPANION_PORT": str(port),
        "COMPANION_METRICS_PORT": "off",
        "COMPANION_GRACE_SECONDS": "0",
        "COMPANION_LOG_LEVEL": "info",
        "COMPANION_TORCH_THREADS": os.environ.get("COMPANION_TORCH_THREADS", "1"),
        **{f"COMPANION_{k.upper()}": v for k, v in settings.items()},
    }
    argv = (
        [sys.executable, "-m", "companion.cli", "serve"]
        if kind == "real"
        else [sys.executable, str(FAKE_SERVER)]
    )
    log = workdir / f"{name}.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return Replica(name, proc, port, log)
