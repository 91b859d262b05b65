"""Round 12 candidate S: the embedded SmolLM2-135M as a sequence classifier over the conversation.

The same rows, pairs, classes, class weights, sampling and validation summary as
``train_cross.py`` (candidate X); the reader differs. SmolLM2-135M-Instruct (the embedded base
LM, converted once from its GGUF) gets a four-way classification head on its last token and LoRA
on every attention and MLP projection; it reads one text: ``Earlier: <earlier user turns>``
(when there are any) and ``Newest: <message>``. Autocast bf16 on CPU (the machine has AVX-512
BF16). Saves after every epoch: ``{run_dir}/lm_reader/adapter_e{N}/`` (LoRA and the head) and
``val_logits_e{N}.npz`` (rows in ``train_cross.py``'s validation order).

Status: round 12 stopped it at step 80 of 692 (about 330 tokens/s on this 2-core CPU, an epoch
~40 minutes, too long beside the evaluation runs), so no S was judged and nothing at run time
loads it. It is the starting point for issue 14's SmolLM2 reader on a GPU (classifier card,
"Round 12").

Usage:
    python safety/train_lm_reader.py --run_dir runs/x1 [--epochs 2] [--threads 2]
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import banner, parse_args
from finetune_encoder import epoch_rows
from train_cross import pairs_of, plan_batches, user_rows, val_summary

from companion.safety.cross import CLASSES

MAX_TOKENS = 256


def lm_text(pair: tuple[str, str]) -> str:
    """The one text the LM reader classifies (its last token carries the verdict)."""
    earlier, message = pair
    return f"Earlier: {earlier}\nNewest: {message}" if earlier else f"Newest: {message}"


@dataclass
class Args:
    run_dir: str = field(default="runs/x1", metadata={"help": "folder from prepare.py"})
    seed: int = field(default=13, metadata={"help": "seed for sampling, order and init"})
    epochs: int = field(default=2, metadata={"help": "passes over the (sampled) rows"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0: none)"})
    batch_size: int = field(default=16, metadata={"help": "texts per step"})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (LoRA; head x3)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    context_turns: int = field(default=3, metadata={"help": "earlier user turns read"})
    max_per_group: int = field(default=500, metadata={"help": "public rows per group and epoch"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch default)"})
    exclude: str = field(default="cssrs", metadata={"help": "sources not trained on"})


class LMTuner:
    """SmolLM2-135M with LoRA and a classification head, and one training step."""

    def __init__(self, args: Args, class_weight: np.ndarray) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from companion.models.lm import resolve_base

        path, _ = resolve_base(None)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(CLASSES))
        base.config.pad_token_id = self.tokenizer.pad_token_id
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.05,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            modules_to_save=["score"],
            task_type="SEQ_CLS",
        )
        self.model = get_peft_model(base, config)
        head = [p for n, p in self.model.named_parameters() if p.requires_grad and "score" in n]
        lora = [p for n, p in self.model.named_parameters() if p.requires_grad and "score" not in n]
        self.opt = torch.optim.AdamW(
            [{"params": lora}, {"params": head, "lr": args.lr * 3}], lr=args.lr, weight_decay=0.01
        )
        self.class_weight = torch.tensor(class_weight, dtype=torch.float32)
        self.trainable = sum(p.numel() for p in lora + head)
        self.last_tokens = 0

    def logits(self, pairs: list[tuple[str, str]]) -> Any:
        import torch

        batch = self.tokenizer(
            [lm_text(p) for p in pairs],
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        self.last_tokens = int(batch["attention_mask"].sum())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.model(**batch).logits
        return out.float()

    def step(self, pairs: list[tuple[str, str]], y: np.ndarray, w: np.ndarray) -> float:
        import torch

        self.model.train()
        loss = torch.nn.functional.cross_entropy(
            self.logits(pairs), torch.from_numpy(y), weight=self.class_weight, reduction="none"
        )
        loss = (loss * torch.from_numpy(w)).mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
        self.opt.step()
        return float(loss.item())

    def predict(self, pairs: list[tuple[str, str]], size: int = 32) -> np.ndarray:
        import torch

        self.model.eval()
        order = np.argsort([len(a) + len(b) for a, b in pairs], kind="stable")
        out = np.empty((len(pairs), len(CLASSES)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(pairs), size):
                idx = order[start : start + size]
                out[idx] = self.logits([pairs[i] for i in idx]).numpy()
        return out


def main(args: Args) -> None:
    import torch

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    out = run / "lm_reader"
    out.mkdir(parents=True, exist_ok=True)
    excluded = {s for s in args.exclude.split(",") if s}
    train = user_rows(run / "splits" / "train.jsonl", excluded)
    val = user_rows(run / "splits" / "val.jsonl", excluded)
    counts = np.array([sum(r["label"] == c for r in train) for c in CLASSES], dtype=np.float64)
    class_weight = np.sqrt(counts.sum() / (len(CLASSES) * np.maximum(counts, 1.0)))
    banner(f"{len(train)} train user rows, {len(val)} validation user rows")
    tuner = LMTuner(args, class_weight)
    print(f"  LoRA r={args.lora_r}: {tuner.trainable:,} trainable", flush=True)
    val_pairs = pairs_of(val, args.context_turns)
    history: list[dict[str, Any]] = []
    step, tokens, t0, done = 0, 0, time.perf_counter(), False
    rng = random.Random(args.seed)
    for epoch in range(1, args.epochs + 1):
        rows = epoch_rows(train, args.max_per_group, rng)
        pairs = pairs_of(rows, args.context_turns)
        plan = plan_batches(pairs, args.batch_size, rng)
        banner(f"epoch {epoch}/{args.epochs}: {len(rows)} rows, {len(plan)} steps")
        losses = []
        for idx in plan:
            y = np.array([CLASSES.index(rows[i]["label"]) for i in idx], dtype=np.int64)
            w = np.array([rows[i].get("weight", 1.0) for i in idx], dtype=np.float32)
            losses.append(tuner.step([pairs[i] for i in idx], y, w))
            tokens += tuner.last_tokens
            step += 1
            if step % 25 == 0:
                rate = tokens / (time.perf_counter() - t0)
                print(
                    f"  step {step}: loss {np.mean(losses[-25:]):.4f}, {rate:.0f} tokens/s",
                    flush=True,
                )
            if args.max_steps and step >= args.max_steps:
                done = True
                break
        tuner.model.save_pretrained(str(out / f"adapter_e{epoch}"))
        logits = tuner.predict(val_pairs)
        summary = val_summary(logits, val)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **summary})
        print(f"  epoch {epoch}: mean loss {np.mean(losses):.4f}; val AUPRC {summary}", flush=True)
        np.savez(out / f"val_logits_e{epoch}.npz", logits=logits)
        seconds = time.perf_counter() - t0
        report = {
            "seed": args.seed,
            "steps": step,
            "epochs": history,
            "tokens": tokens,
            "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "lora_r": args.lora_r,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "context_turns": args.context_turns,
            "max_per_group": args.max_per_group,
            "excluded_sources": sorted(excluded),
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
        if done:
            break
    print(f"\nwrote {out} ({step} steps, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main(parse_args(Args))
