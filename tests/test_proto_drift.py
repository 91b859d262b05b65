"""The committed generated gRPC code matches what ``make proto`` produces from ``proto/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "src" / "companion" / "_proto"


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.suffix in {".py", ".pyi"}
    }


def test_generated_code_has_not_drifted(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make proto` and commit: {stale} differ from proto/"


def test_library_core_does_not_import_generated_code():
    """Domain modules never import _pb2 (house rule 7); only the adapters do."""
    adapters = {"_wire.py", "testing.py"}
    src = ROOT / "src" / "companion"
    for path in src.rglob("*.py"):
        rel = path.relative_to(src)
        if rel.parts[0] in {"_proto", "server", "client"} or rel.name in adapters:
            continue
        text = path.read_text()
        assert "_pb2" not in text and "import grpc" not in text, rel
