"""A real, throwaway ``transformers serve`` (OpenAI-compatible) for the remote generator's
integration tests: the converted embedded model directory, on CPU, loopback, a free port,
offline (``HF_HUB_OFFLINE=1``), one torch thread. Its log is kept so tests can read what the
server did; stopped afterwards.

The tests skip, saying why, only when the serving extras of transformers (fastapi, uvicorn,
openai) are missing; ``make setup`` installs them (the ``dev`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .redis_server import free_port

MISSING = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
SKIP_REASON = (
    f"transformers serve needs {', '.join(MISSING)}: pip install 'transformers[serving]'"
    " (make setup installs it)"
)


class TransformersServer:
    """One ``transformers serve`` process serving ``model_dir`` (which names the model in
    requests too)."""

    def __init__(self, model_dir: str, workdir: Path, startup_timeout: float = 240.0) -> None:
        if MISSING:
            pytest.skip(SKIP_REASON)
        self.model = model_dir
        self.log_path = workdir / "transformers-serve.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        for _ in range(3):  # the free port may be taken between free_port() and the bind
            self.port = free_port()
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "transformers.cli.transformers", "serve"),
                        *("--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"),
                        *("--log-level", "info", model_dir),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            if self._wait_healthy(startup_timeout):
                return
            self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"transformers serve did not start; its log ends:\n{tail}")

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def requests_received(self) -> int:
        """Chat requests the server has answered, from uvicorn's access log (transformers 5.25
        dropped its own ``[Request received]`` line)."""
        return self.log_path.read_text(errors="replace").count('"POST /v1/chat/completions ')

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (all its threads), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return True
            except OSError:
                time.sleep(0.25)
        return False

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
