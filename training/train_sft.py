"""Supervised fine-tuning with LoRA (peft) through the Hugging Face Trainer.

Reads the chat JSONL from ``prepare_data.py``, formats it with the service's system prompt and
chat template, trains on the assistant tokens only, and saves the adapter with
``save_pretrained`` (optionally merged), a loss-curve PNG and ``training_summary.json``.

    python training/train_sft.py --config training/configs/smollm2-135m-cpu.yaml
    python training/train_sft.py --config training/configs/smollm2-135m-cpu.yaml --max_steps 5
    torchrun --nproc_per_node 2 training/train_sft.py --config ... --ddp_backend gloo

Runs as-is under ``torchrun`` / ``accelerate launch`` (DDP): the Trainer shards the data, and
every rank writes the hash of its trained LoRA weights to ``rank<N>.sha256`` so that a run can
check that all ranks agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import encode_chat, read_jsonl, trains_last_only

from companion.models import load_causal_lm


@dataclass
class ModelArguments:
    base_model: str | None = field(
        default=None, metadata={"help": "base causal LM: a directory or hub id; none = embedded"}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA path"})
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        metadata={"help": "module names that get LoRA adapters"},
    )
    merge: bool = field(default=False, metadata={"help": "also save base+adapter merged"})

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class DataArguments:
    data_dir: str = field(default="runs/sft-data", metadata={"help": "prepare_data.py output"})
    max_length: int = field(default=512, metadata={"help": "longer conversations are skipped"})
    max_train_examples: int | None = field(default=None, metadata={"help": "subsample (tests)"})
    max_eval_examples: int | None = field(default=64, metadata={"help": "validation subsample"})
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "stop cleanly after this wall-clock budget"}
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "stop after this many evaluations without a better validation loss (needs "
            "load_best_model_at_end and matching eval/save steps); the best checkpoint is saved"
        },
    )


class ChatDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def load_split(
    tokenizer: Any, path: Path, max_length: int, limit: int | None, seed: int
) -> ChatDataset:
    examples = read_jsonl(path)
    if limit is not None and limit < len(examples):  # a seeded sample, not the file's head
        examples = random.Random(seed).sample(examples, limit)
    rows, skipped = [], 0
    for ex in examples:
        enc = encode_chat(tokenizer, ex["messages"], max_length, trains_last_only(ex))
        if enc is None:
            skipped += 1
        else:
            rows.append(enc)
    tokens = sum(len(r["input_ids"]) for r in rows)
    print(f"{path.name}: {len(rows)} examples, {tokens} tokens, {skipped} skipped (> max_length)")
    return ChatDataset(rows)


class TimeBudget(TrainerCallback):
    """Stops training cleanly once the wall-clock budget is spent, or when a file named STOP
    appears in the output directory (to end a long run early and still save the adapter)."""

    def __init__(self, minutes: float | None, output_dir: str) -> None:
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes
        self.stop_file = Path(output_dir) / "STOP"
        self.hit = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        late = self.deadline is not None and time.monotonic() > self.deadline
        if late or self.stop_file.exists():
            self.hit = control.should_training_stop = True
        return control


def lora_digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (assistant tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments),
        usage="%(prog)s [--config FILE.yaml] [--FLAG VALUE ...]",
        description="LoRA supervised fine-tuning of a causal LM on prepare_data.py's output. "
        "--config FILE.yaml reads any of the flags below from a YAML file (keys are flag names, "
        "e.g. training/configs/smollm2-135m-cpu.yaml); flags given on the command line "
        "override it.",
    )
    # Read by parse() before the dataclasses see the flags; declared here so --help lists it.
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=None,
        help="YAML file whose keys are any of the flags below (e.g. training/configs/"
        "smollm2-135m-cpu.yaml); flags given on the command line override it",
    )
    return parser


def parse(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):  # YAML first, command-line flags override it
        if arg == "--config" or arg.startswith("--config="):
            if arg == "--config" and i + 1 >= len(argv):
                parser.error("--config needs a YAML file")
            path = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
            config = yaml.safe_load(Path(path).read_text()) or {}
            argv = argv[:i] + argv[i + (1 if "=" in arg else 2) :]
            flags: list[str] = []
            for key, value in config.items():
                values = value if isinstance(value, list) else [value]
                flags += [f"--{key}", *(str(v) for v in values)]
            argv = flags + argv
            break
    model_args, data_args, args, _ = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, args


def main() -> None:
    model_args, data_args, args = parse()
    # Throughput is reported in real (non-padding) tokens; argparse cannot spell this value.
    args.include_num_input_tokens_seen = "non_padding"
    set_seed(args.seed)
    on_gpu = torch.cuda.is_available() and not args.use_cpu
    # bf16 on CPU is autocast over fp32 weights (AVX-512 BF16: 2.2x the fp32 step here)
    device = (
        f"cuda:{args.local_rank}"
        if on_gpu and args.local_rank >= 0
        else ("cuda" if on_gpu else "cpu")
    )
    model, tokenizer = load_causal_lm(model_args.base_model, dtype="float32", device=device)
    tokenizer.padding_side = "right"

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=model_args.target_modules,
        ),
    )
    if args.process_index == 0:
        model.print_trainable_parameters()

    data_dir = Path(data_args.data_dir)
    train = load_split(
        tokenizer,
        data_dir / "train.jsonl",
        data_args.max_length,
        data_args.max_train_examples,
        args.seed,
    )
    val = load_split(
        tokenizer,
        data_dir / "validation.jsonl",
        data_args.max_length,
        data_args.max_eval_examples,
        args.seed,
    )
    budget = TimeBudget(data_args.max_train_minutes, args.output_dir)
    callbacks: list[TrainerCallback] = [budget]
    if data_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(data_args.early_stopping_patience))
    resume = args.resume_from_checkpoint
    if resume == "last":  # the newest checkpoint-N of output_dir, or a fresh start
        resume = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        print(f"resuming from {resume}" if resume else "no checkpoint to resume from")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val if len(val) else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    metrics = trainer.evaluate() if len(val) else {}

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank{rank}.sha256").write_text(lora_digest(model) + "\n")
    if not trainer.is_world_process_zero():
        return
    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    summary = {
        "base_model": model_args.base_model or "embedded:smollm2-135m-instruct",
        "model_args": asdict(model_args),
        "data_args": asdict(data_args),
        "seed": args.seed,
        "world_size": args.world_size,
        "device": device,
        "precision": ("bf16" if on_gpu else "bf16 autocast") if args.bf16 else "fp32",
        "resumed_from": resume,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_eval_loss": trainer.state.best_metric,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "stopped_early": budget.hit,
        "train_seconds": round(seconds, 1),
        "tokens_seen_non_padding": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "train_loss": round(result.training_loss, 4),
        "eval_loss": round(metrics["eval_loss"], 4) if "eval_loss" in metrics else None,
        "log_history": trainer.state.log_history,
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_losses(trainer.state.log_history, out / "loss.png")
    if model_args.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
    print(json.dumps({k: v for k, v in summary.items() if k != "log_history"}, indent=2))
    print(f"adapter saved to {adapter_dir}")


if __name__ == "__main__":
    main()
