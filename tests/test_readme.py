"""Every Python block of the README runs as written, on the real embedded models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), flags=re.S)
# Illustrations that name the reader's own files, not runnable here:
PLACEHOLDERS = ("/models/my-chat-model",)


def _runnable() -> list[str]:
    return [b for b in BLOCKS if not any(p in b for p in PLACEHOLDERS)]


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "block.py"
    script.write_text(code, "utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_the_readme_has_the_python_blocks_we_expect():
    assert len(BLOCKS) == 4 and len(_runnable()) == 3


def test_library_quick_start_block(tmp_path):
    block = next(b for b in _runnable() if "Companion.from_defaults" in b)
    proc = _run(block, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert "Category.CRISIS Action.REDIRECTED" in out or "crisis redirected" in out
    assert out[-1] == "4"  # the history length the comment promises


def test_test_server_block(tmp_path):
    block = next(b for b in _runnable() if "run_test_server" in b)
    proc = _run(block, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_client_block_against_a_real_server(tmp_path):
    from companion.testing import run_test_server

    block = next(b for b in _runnable() if "CompanionClient(" in b)
    with run_test_server() as server:
        proc = _run(block.replace("127.0.0.1:50051", server.address), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("crisis redirected ['Samaritans'")
    assert lines[-2:] == [" 3", "4"]
