"""The training scripts' command lines: ``train_sft.py --help`` documents ``--config``, and
the YAML is read first with command-line flags overriding it (no model is loaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_sft():
    sys.path.insert(0, str(ROOT / "training"))
    try:
        import train_sft

        return train_sft
    finally:
        sys.path.pop(0)


def test_help_lists_config():
    proc = subprocess.run(
        [sys.executable, "training/train_sft.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: train_sft.py [--config FILE.yaml]")
    assert "  --config FILE.yaml" in proc.stdout


def test_config_then_flags_override(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 7\nlora_r: 4\noutput_dir: out-a\nuse_cpu: true\n")
    model_args, data_args, args = train_sft().parse(
        ["--config", str(config), "--max_steps", "2", "--max_length", "99"]
    )
    assert args.max_steps == 2 and model_args.lora_r == 4 and data_args.max_length == 99
    assert args.output_dir == "out-a"
    _, _, args = train_sft().parse([f"--config={config}"])
    assert args.max_steps == 7


def load_script(name: str):
    """A training script as a module under a private name (``evaluate`` is also a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"_training_{name}", ROOT / "training" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_evaluate_takes_the_first_distinct_test_prompts():
    evaluate = load_script("evaluate")

    def ex(question: str, answer: str) -> dict:
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }

    # counsel-chat: several therapists answer one question, so the split repeats prompts
    test = [ex("q1", "a"), ex("q1", "b"), ex("q2", "c"), ex("q1", "d"), ex("q3", "e")]
    got = evaluate.distinct_conversations(test, 2)
    assert [c[-1]["content"] for c in got] == ["q1", "q2"]
    assert all(c[-1]["role"] == "user" for c in got)  # the reply is not part of the prompt
    assert len(evaluate.distinct_conversations(test, 30)) == 3
