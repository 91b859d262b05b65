"""The safety scripts run end to end (prepare -> finetune_encoder -> train -> calibrate ->
evaluate) on a tiny subset, so they cannot rot. Real embedded encoder; everything is written
under tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SHARED_DATA as DATA

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,  # fine-tunes and loads the real embedded encoder
    pytest.mark.skipif(
        not (DATA / "DiaSafety").is_dir(), reason="shared public data not present at ../shared/data"
    ),
]


def _proc(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "safety" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def _run(script: str, *args: str) -> str:
    proc = _proc(script, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_prepare_finetune_train_calibrate_evaluate_on_a_tiny_subset(tmp_path):
    run = str(tmp_path / "run")
    out = _run("prepare.py", "--out_dir", run, "--data_dir", str(DATA), "--max_per_source", "4")
    assert "train hash" in out
    out = _run(
        "finetune_encoder.py", "--run_dir", run, "--max_steps", "3", "--batch_size", "8",
        "--layers", "3", "--supcon", "0.5",
    )  # fmt: skip
    assert "val AUPRC" in out and "first 3 layers" in out
    report = json.loads((tmp_path / "run" / "encoder_report.json").read_text())
    assert report["steps"] == 3 and report["tokens"] > 0 and report["layers"] == 3
    assert report["supcon"] == {"weight": 0.5, "temperature": 0.1}
    out = _run("train.py", "--run_dir", run, "--c_grid", "1", "--quantization", "int8-dynamic")
    assert "fine-tuned adapter: " + str(tmp_path / "run" / "encoder_adapter") in out
    assert "encoder layers: 3; quantization: int8-dynamic" in out
    out = _run("calibrate.py", "--run_dir", run)
    assert "wrote" in out and "installed" not in out
    assert "recall floor trade-off" in out and "<- this run's floor" in out
    floors = json.loads((tmp_path / "run" / "crisis_floors.json").read_text())
    assert [f["floor"] for f in floors] == [0.97, 0.95, 0.93, 0.90]
    artifact = tmp_path / "run" / "artifact"
    policy = json.loads((artifact / "policy.json").read_text())
    assert set(policy["thresholds"]) == {"user", "assistant"}
    assert policy["encoder_adapter"] == "encoder_adapter"
    assert (artifact / "encoder_adapter" / "adapter_model.safetensors").is_file()
    assert policy["encoder_layers"] == 3 and policy["encoder_quantization"] == "int8-dynamic"
    from companion.safety import SafetyClassifier

    clf = SafetyClassifier.from_defaults(artifact=artifact)
    assert clf.encoder.name.startswith("embedded:all-minilm-l6-v2:L3+lora:")
    assert clf.encoder.name.endswith("+int8")
    assert clf.classify("hello").scores.keys() == set(clf.head.labels)
    out = _run(
        "evaluate.py",
        "--run_dir",
        run,
        "--artifact",
        str(tmp_path / "run" / "artifact"),
        "--data_dir",
        str(DATA),
        "--n_boot",
        "20",
        "--max_external",
        "40",
        "--plots",
        "false",
    )
    assert "| target |" in out
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["targets"] and metrics["sources"]


def test_train_cross_and_calibrate_cross_on_a_tiny_subset(tmp_path):
    """The cross-encoder recipe: train a few steps, then the round 12 calibration (conversation
    floors found by replaying the validation dialogues) writes a loadable artifact."""
    run = str(tmp_path / "run")
    style = str(REPO / "training" / "data" / "style")
    _run("prepare.py", "--out_dir", run, "--data_dir", str(DATA), "--max_per_source", "6",
         "--style_dir", style)  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "run" / "splits" / "train.jsonl").open()]
    assert any(r["source"] == "style" for r in rows)  # the style turns train as none
    assert all(r["label"] == "none" for r in rows if r["source"] == "style")
    out = _run("train_cross.py", "--run_dir", run, "--epochs", "1", "--max_steps", "2",
               "--batch_size", "8", "--threads", "1")  # fmt: skip
    assert "val AUPRC" in out
    crisis = "i have the pills and im taking them tonight"
    proc = _proc("calibrate_cross.py", "--run_dir", run, "--first_turn", "0.5",
                 "--after_crisis", crisis, "--after_crisis_max", "-1")  # fmt: skip
    assert proc.returncode != 0 and "after the crisis" in proc.stderr  # round 31's bound
    out = _run("calibrate_cross.py", "--run_dir", run, "--first_turn", "0.5",
               "--after_crisis", crisis)  # fmt: skip
    assert "conversation floors in the validation replay" in out and "<- chosen" in out
    assert "after the crisis" in out
    artifact = tmp_path / "run" / "artifact_cross"
    policy = json.loads((artifact / "policy.json").read_text())
    assert policy["user_reader"] == "cross" and "replay" in policy["training"]
    assert "benign_after_crisis_in_context_interrupted" in policy["training"]["replay"]
    from companion.safety import SafetyClassifier

    clf = SafetyClassifier.from_defaults(artifact=artifact)
    assert clf.classify("hello").decision.value in ("none", "check_in", "redirect")
    out = _run("evaluate.py", "--run_dir", run, "--artifact", str(artifact), "--data_dir",
               str(DATA), "--n_boot", "20", "--max_external", "40", "--plots", "false")  # fmt: skip
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert any(k.endswith("/risk") for k in metrics["sources"])  # users: three levels
    assert not any(k.startswith("assistant/") and k.endswith("/risk") for k in metrics["sources"])
