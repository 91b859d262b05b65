"""A real, throwaway ``redis-server`` for the Redis session store tests.

No persistence (``--save '' --appendonly no``), loopback only, on a free port, in a temporary
directory; stopped afterwards. The tests skip, saying why, only when ``redis-server`` is not on
PATH (``make test`` installs it where it can: the Makefile's ``redis`` target).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = (
    "redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install redis-server;"
    " `make test` does this as root) to run the Redis session store tests"
)


def free_port() -> int:
    """A loopback port nothing listens on (the OS picked it; a race is possible, and retried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; :meth:`stop`, :meth:`pause` and :meth:`resume` for the
    failure tests."""

    def __init__(self, workdir: Path, *args: str) -> None:
        if REDIS_SERVER is None:
            pytest.skip(SKIP_REASON)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # the free port may be taken between free_port() and the bind
            self.port = free_port()
            options = {
                "--port": str(self.port),
                "--bind": "127.0.0.1",
                "--save": "",
                "--appendonly": "no",
                "--dir": str(workdir),
                "--logfile": str(workdir / "redis.log"),
                "--daemonize": "no",
            }
            self.proc = subprocess.Popen(
                [REDIS_SERVER, *(x for kv in options.items() for x in kv), *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_listening(10.0):
                return
            self.stop()
        log = (workdir / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start; its log ends:\n{log}")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel, never answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
