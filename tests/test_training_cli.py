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


def test_shipped_configs_parse_and_keep_the_best_checkpoint():
    for name in ("smollm2-135m-cpu", "smollm2-135m-h200"):
        config = ["--config", f"training/configs/{name}.yaml"]
        # bf16 needs a GPU or use_cpu to parse; this machine has no GPU
        _, data_args, args = train_sft().parse([*config, "--use_cpu", "true"])
        assert data_args.early_stopping_patience and args.load_best_model_at_end
        assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
        assert args.save_steps % args.eval_steps == 0 and args.bf16
