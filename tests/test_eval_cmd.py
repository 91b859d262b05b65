"""``companion eval safety|model`` runs the checkout's evaluation scripts as subprocesses (the
full evaluations take minutes and are not run here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from companion._eval_cmd import find_checkout, script_command
from companion.cli import build_parser
from companion.models import shipped_adapter_path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    """``companion`` in-process without ``cli.main``'s logging setup: structlog would keep
    writing to this test's captured stderr after it is closed."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def companion_cli(*args: str, cwd: Path = ROOT, pythonpath: Path | None = None):
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", "companion.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_installed_package_without_scripts_says_it_needs_a_checkout(tmp_path: Path):
    # The package alone, as a wheel installs it: no safety/ or training/ next to it.
    site = tmp_path / "site-packages"
    shutil.copytree(
        ROOT / "src" / "companion",
        site / "companion",
        ignore=shutil.ignore_patterns("__pycache__", "adapters", "artifacts"),
    )
    for target in ("safety", "model"):
        proc = companion_cli("eval", target, cwd=tmp_path, pythonpath=site)
        assert proc.returncode == 2, proc.stderr
        assert "not with the installed package" in proc.stderr
        assert "source checkout" in proc.stderr and "--checkout DIR" in proc.stderr
        assert str(tmp_path) in proc.stderr  # it looked where the package is
        assert "Traceback" not in proc.stderr


def test_a_checkout_without_the_scripts_is_refused(tmp_path: Path, capsys):
    assert find_checkout(str(tmp_path)) is None
    assert main(["eval", "--checkout", str(tmp_path), "safety"]) == 2
    assert "safety/evaluate.py is not in" in capsys.readouterr().err


def test_this_checkout_is_found():
    assert find_checkout() == ROOT


@pytest.mark.parametrize(
    ("target", "flag"), [("model", "--max_test_prompts"), ("safety", "--n_boot")]
)
def test_help_is_the_scripts_own(target: str, flag: str):
    proc = companion_cli("eval", target, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert flag in proc.stdout


def test_model_defaults_and_overrides():
    cmd = script_command("model", ROOT, ["--data-dir=/d", "--max_test_prompts", "5"])
    assert cmd[:2] == [sys.executable, str(ROOT / "training" / "evaluate.py")]
    assert cmd[cmd.index("--adapter") + 1] == str(shipped_adapter_path())
    assert cmd[cmd.index("--output_dir") + 1] == str(ROOT / "runs" / "eval")
    assert "--data_dir" not in cmd  # the user's --data-dir wins
    assert cmd[-3:] == ["--data-dir=/d", "--max_test_prompts", "5"]
    assert script_command("safety", ROOT, ["--n_boot", "9"])[2:] == ["--n_boot", "9"]


def fake_checkout(tmp_path: Path) -> Path:
    """A checkout whose evaluation scripts print the arguments they were given."""
    echo = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    for script in ("safety/evaluate.py", "training/evaluate.py"):
        (tmp_path / script).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / script).write_text(echo)
    return tmp_path


def test_missing_prepared_data_is_named_before_any_model_loads(tmp_path: Path, capsys):
    checkout = fake_checkout(tmp_path)
    assert main(["eval", "--checkout", str(checkout), "model"]) == 2
    err = capsys.readouterr().err
    assert "no prepared data" in err and "training/prepare_data.py" in err
    assert main(["eval", "--checkout", str(checkout), "safety"]) == 2
    assert "safety/prepare.py" in capsys.readouterr().err


def test_runs_the_script_with_defaults_and_passes_extra_args(tmp_path: Path, capfd):
    checkout = fake_checkout(tmp_path)
    (checkout / "runs" / "sft-data").mkdir(parents=True)
    (checkout / "runs" / "sft-data" / "test.jsonl").write_text("{}\n")
    rc = main(["eval", "--checkout", str(checkout), "model", "--max_test_prompts", "3"])
    assert rc == 0
    argv = json.loads(capfd.readouterr().out)
    assert argv[argv.index("--data_dir") + 1] == str(checkout / "runs" / "sft-data")
    assert argv[-2:] == ["--max_test_prompts", "3"]
    rc = main(["eval", "--checkout", str(checkout), "safety", "--run_dir", "/r", "--n_boot", "5"])
    assert rc == 0
    assert json.loads(capfd.readouterr().out) == ["--run_dir", "/r", "--n_boot", "5"]
