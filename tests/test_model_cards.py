"""Model cards carry Hugging Face front matter with true values, the shipped adapter has its
own card and records the base by its Hub id, and export writes both (parsed with
``huggingface_hub.ModelCard``; nothing is sent to the Hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from companion.models import EMBEDDED_BASE_HUB_ID, shipped_adapter_path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = (
    "license",
    "base_model",
    "library_name",
    "datasets",
    "tags",
    "metrics",
    "language",
    "pipeline_tag",
)
# Sets that must never be listed as training data: evaluation-only, or held out (C-SSRS).
NOT_TRAINED_ON = ("xstest", "simplesafetytests", "cssrs", "c-ssrs", "exaggerated-safety")
LM_DATASETS = ["nbertagnolli/counsel-chat", "uccollab/AnnoMI"]


def front_matter(path: Path) -> dict:
    assert path.read_text().startswith("---\n"), f"{path} has no front matter"
    data = ModelCard.load(path).data.to_dict()
    missing = [k for k in REQUIRED if not data.get(k)]
    assert not missing, f"{path}: missing {missing}"
    assert data["license"] == "apache-2.0" and data["language"] == ["en"]
    for name in data["datasets"]:
        assert not any(bad in name.lower() for bad in NOT_TRAINED_ON), name
    return data


def test_model_card_front_matter():
    data = front_matter(ROOT / "MODEL_CARD.md")
    assert data["base_model"] == EMBEDDED_BASE_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-generation"
    assert data["datasets"] == LM_DATASETS
    assert "perplexity" in data["metrics"]


def test_classifier_card_front_matter():
    data = front_matter(ROOT / "safety" / "CLASSIFIER_CARD.md")
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["pipeline_tag"] == "text-classification"
    assert set(data["datasets"]) == {
        "thu-coai/diasafety",
        "abachaa/MeQSum",
        "nbertagnolli/counsel-chat",
        "uccollab/AnnoMI",
    }
    # The card's text starts right after the front matter, unchanged.
    assert (
        ModelCard.load(ROOT / "safety" / "CLASSIFIER_CARD.md")
        .text.lstrip()
        .startswith("# Classifier card: companion safety guard")
    )


def test_shipped_adapter_card_and_config():
    adapter = shipped_adapter_path()
    data = front_matter(adapter / "README.md")
    assert data == front_matter(ROOT / "MODEL_CARD.md")  # one artifact, one set of metadata
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_BASE_HUB_ID  # not a local cache path


def export_adapter():
    sys.path.insert(0, str(ROOT / "training"))
    try:
        import export_adapter

        return export_adapter
    finally:
        sys.path.pop(0)


def test_shipped_card_is_what_export_writes():
    adapter = shipped_adapter_path()
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert (adapter / "README.md").read_text() == export_adapter().adapter_card(summary)


def fake_run(tmp_path: Path, base_model: str) -> Path:
    import torch
    from safetensors.torch import save_file

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    shipped = shipped_adapter_path()
    config = json.loads((shipped / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/root/.cache/companion/models/smollm2-local"
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    save_file({"w": torch.ones(2, 2)}, run / "adapter" / "adapter_model.safetensors")
    summary = json.loads((shipped / "training_summary.json").read_text())
    summary.update(base_model=base_model, steps=7, log_history=[{"step": 1, "loss": 3.0}])
    (run / "training_summary.json").write_text(json.dumps(summary))
    return run


def test_export_writes_hub_id_card_and_fp16(tmp_path: Path):
    from safetensors.torch import load_file

    run = fake_run(tmp_path, "embedded:smollm2-135m-instruct")
    target = tmp_path / "exported"
    export_adapter().main(str(run), str(target))
    config = json.loads((target / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_BASE_HUB_ID
    card = ModelCard.load(target / "README.md")
    assert card.data.base_model == EMBEDDED_BASE_HUB_ID
    assert "| run | 7 steps" in card.text
    summary = json.loads((target / "training_summary.json").read_text())
    assert "log_history" not in summary
    assert str(load_file(target / "adapter_model.safetensors")["w"].dtype) == "torch.float16"


def test_export_refuses_an_adapter_of_another_base(tmp_path: Path):
    run = fake_run(tmp_path, "/models/dialogpt-medium")
    with pytest.raises(SystemExit, match="embedded base only"):
        export_adapter().main(str(run), str(tmp_path / "exported"))
    assert not (tmp_path / "exported").exists()


@pytest.mark.slow
def test_shipped_adapter_loads_offline_onto_the_embedded_base():
    """The adapter config names a Hub id that is not in any cache here: loading must not
    resolve it (the base is the embedded GGUF-converted model)."""
    code = (
        "from companion.models import load_causal_lm\n"
        "lm, tok = load_causal_lm(adapter='shipped')\n"
        "print(type(lm).__name__, lm.peft_config['default'].base_model_name_or_path)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["PeftModelForCausalLM", EMBEDDED_BASE_HUB_ID]
