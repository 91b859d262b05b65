"""Copy a trained adapter into the package as the shipped default, with weights in fp16.

    python training/export_adapter.py runs/sft-smollm2-cpu

fp16 halves the file; PEFT casts the weights to the base model's dtype when it loads them.
The run's ``training_summary.json`` goes along (without the per-step log) for the model card.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from companion.models import shipped_adapter_path


def main(run_dir: str) -> None:
    run = Path(run_dir)
    target = shipped_adapter_path()
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(run / "adapter" / "adapter_config.json", target / "adapter_config.json")
    tensors = load_file(run / "adapter" / "adapter_model.safetensors")
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in tensors.items()},
        target / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )
    summary = json.loads((run / "training_summary.json").read_text())
    summary.pop("log_history", None)
    (target / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    print(f"exported {len(tensors)} tensors to {target} ({size:.1f} MiB)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python training/export_adapter.py RUN_DIR")
    main(sys.argv[1])
