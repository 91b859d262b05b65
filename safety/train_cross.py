"""Policy 5, step 1 of 2: fine-tune all-MiniLM-L6-v2 as a cross-encoder over the conversation.

Each user row of ``prepare.py``'s train split becomes one text pair (``companion.safety.cross.
pair_texts``: the earlier user turns and the check-in marker, then the newest message) with one
of four classes (none / check_in / crisis / medical); the encoder is trained with LoRA on its
attention and feed-forward layers and a linear head over the mean-pooled tokens, with
class-weighted cross-entropy. Unlike ``finetune_encoder.py``, rows with conversation context are
trained on: the label of a later turn belongs to the conversation, and the cross-encoder reads
the conversation. Public sources are sampled to at most ``--max_per_group`` rows per (source,
label) each epoch; hand-written rows and dialogue turns are all used. Sources in ``--exclude``
(C-SSRS, an evaluation set) are left out.

After every epoch the validation user rows are scored; the logits of the last epoch are saved
for ``calibrate_cross.py``. Writes ``{run_dir}/cross/`` (``adapter/``, ``head.npz``,
``val_logits.npz``, ``report.json``).

Usage:
    python safety/train_cross.py [--run_dir runs/triage1] [--epochs 3] [--max_steps 0]
        [--init_from EPOCH]  # train --epochs more epochs from a saved one
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_RUN_DIR, banner, parse_args, read_jsonl
from finetune_encoder import epoch_rows, save_fp16

from companion.safety.cross import CLASSES, pair_texts, pooled_pairs


@dataclass
class Args:
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "folder from prepare.py"})
    seed: int = field(default=13, metadata={"help": "seed for sampling, order and init"})
    epochs: int = field(default=3, metadata={"help": "passes over the (sampled) rows"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0: none)"})
    batch_size: int = field(default=32, metadata={"help": "pairs per step"})
    lr: float = field(default=4e-4, metadata={"help": "AdamW learning rate (LoRA; head x5)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    context_turns: int = field(default=3, metadata={"help": "earlier user turns read"})
    max_per_group: int = field(default=500, metadata={"help": "public rows per group and epoch"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch default)"})
    exclude: str = field(default="cssrs", metadata={"help": "sources not trained on"})
    init_from: str = field(
        default="", metadata={"help": "continue from EPOCH of {run_dir}/cross (adapter, head)"}
    )

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lora_r < 1:
            raise ValueError("need epochs >= 1, batch_size >= 1 and lora_r >= 1")


def user_rows(path: Path, excluded: set[str]) -> list[dict[str, Any]]:
    """The split's user rows of the four classes, sources in ``excluded`` left out."""
    return [
        r
        for r in read_jsonl(path)
        if r["role"] == "user" and r["label"] in CLASSES and r["source"] not in excluded
    ]


def pairs_of(rows: list[dict[str, Any]], turns: int) -> list[tuple[str, str]]:
    return [
        pair_texts(r["text"], r.get("context", ()), bool(r.get("last_assistant")), turns)
        for r in rows
    ]


class CrossTuner:
    """The encoder with LoRA, the linear head, and one training step."""

    def __init__(self, args: Args, class_weight: np.ndarray) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel, AutoTokenizer

        from companion.models.encoder import embedded_encoder_path

        path = str(embedded_encoder_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModel.from_pretrained(path)
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.1,
            target_modules=["query", "key", "value", "dense"],
            bias="none",
        )
        if args.init_from:
            from peft import PeftModel

            folder = Path(args.run_dir) / "cross" / f"adapter_e{args.init_from}"
            self.model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
            for p in self.model.parameters():  # saved as fp16; train in fp32
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            self.model = get_peft_model(base, config)
        self.head = torch.nn.Linear(base.config.hidden_size, len(CLASSES))
        if args.init_from:
            with np.load(Path(args.run_dir) / "cross" / f"head_e{args.init_from}.npz") as h:
                self.head.weight.data = torch.from_numpy(h["weight"].copy())
                self.head.bias.data = torch.from_numpy(h["bias"].copy())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            [{"params": params}, {"params": self.head.parameters(), "lr": args.lr * 5}],
            lr=args.lr,
            weight_decay=0.01,
        )
        self.class_weight = torch.tensor(class_weight, dtype=torch.float32)
        self.trainable = sum(p.numel() for p in params)
        self.last_tokens = 0

    def logits(self, pairs: list[tuple[str, str]]) -> Any:
        import torch

        pooled, self.last_tokens = pooled_pairs(self.tokenizer, self.model, pairs)
        return self.head(torch.nn.functional.dropout(pooled, 0.1, self.model.training))

    def step(self, pairs: list[tuple[str, str]], y: np.ndarray, w: np.ndarray) -> float:
        return weighted_step(self, pairs, y, w)

    def predict(self, pairs: list[tuple[str, str]], size: int = 64) -> np.ndarray:
        import torch

        self.model.eval()
        order = np.argsort([len(a) + len(b) for a, b in pairs], kind="stable")
        out = np.empty((len(pairs), len(CLASSES)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(pairs), size):
                idx = order[start : start + size]
                out[idx] = self.logits([pairs[i] for i in idx]).numpy()
        return out


def weighted_step(tuner: Any, pairs: list[tuple[str, str]], y: np.ndarray, w: np.ndarray) -> float:
    """One optimiser step of ``tuner`` (``model``, ``opt``, ``class_weight``, ``logits(pairs)``):
    class- and row-weighted cross-entropy, gradients clipped at 1.0; returns the loss."""
    import torch

    tuner.model.train()
    loss = torch.nn.functional.cross_entropy(
        tuner.logits(pairs), torch.from_numpy(y), weight=tuner.class_weight, reduction="none"
    )
    loss = (loss * torch.from_numpy(w)).mean()
    tuner.opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in tuner.opt.param_groups for p in g["params"]], 1.0)
    tuner.opt.step()
    return float(loss.item())


def plan_batches(pairs: list[tuple[str, str]], size: int, rng: random.Random) -> list[list[int]]:
    """Length-grouped batches in random order."""
    order = sorted(
        range(len(pairs)), key=lambda i: (len(pairs[i][0]) + len(pairs[i][1]), rng.random())
    )
    out = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(out)
    return out


def val_summary(logits: np.ndarray, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Validation AUPRC of at-least-check-in, crisis and medical from the softmax."""
    from sklearn.metrics import average_precision_score

    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([r["label"] for r in rows])
    out = {}
    for name, hits, score in (
        ("risk", {"check_in", "crisis"}, p[:, 1] + p[:, 2]),
        ("crisis", {"crisis"}, p[:, 2]),
        ("medical", {"medical"}, p[:, 3]),
    ):
        y = np.isin(labels, list(hits))
        out[name] = round(float(average_precision_score(y, score)), 4)
    return out


def main(args: Args) -> None:
    import torch

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    out = run / "cross"
    out.mkdir(parents=True, exist_ok=True)
    excluded = {s for s in args.exclude.split(",") if s}
    train = user_rows(run / "splits" / "train.jsonl", excluded)
    val = user_rows(run / "splits" / "val.jsonl", excluded)
    counts = np.array([sum(r["label"] == c for r in train) for c in CLASSES], dtype=np.float64)
    class_weight = np.sqrt(counts.sum() / (len(CLASSES) * np.maximum(counts, 1.0)))
    banner(f"{len(train)} train user rows, {len(val)} validation user rows")
    for c, n, w in zip(CLASSES, counts, class_weight, strict=True):
        print(f"  {c:9s} {int(n):6d} rows  class weight {w:.2f}")
    tuner = CrossTuner(args, class_weight)
    print(f"  LoRA r={args.lora_r}: {tuner.trainable:,} trainable", flush=True)
    val_pairs = pairs_of(val, args.context_turns)
    history: list[dict[str, Any]] = []
    step, tokens, t0, done = 0, 0, time.perf_counter(), False
    first = int(args.init_from or 0) + 1
    rng = random.Random(args.seed + first - 1)  # a continuation samples new epochs
    if args.init_from:  # the earlier epochs' history, so report.json covers them all
        history = json.loads((out / "report.json").read_text("utf-8"))["epochs"][: first - 1]
    for epoch in range(first, first + args.epochs):
        rows = epoch_rows(train, args.max_per_group, rng)
        pairs = pairs_of(rows, args.context_turns)
        plan = plan_batches(pairs, args.batch_size, rng)
        banner(f"epoch {epoch}/{first + args.epochs - 1}: {len(rows)} rows, {len(plan)} steps")
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
        logits = tuner.predict(val_pairs)
        summary = val_summary(logits, val)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **summary})
        print(f"  epoch {epoch}: mean loss {np.mean(losses):.4f}; val AUPRC {summary}", flush=True)
        np.savez(out / f"val_logits_e{epoch}.npz", logits=logits)
        save_fp16(tuner.model, out / f"adapter_e{epoch}", "embedded:all-minilm-l6-v2")
        head = tuner.head
        np.savez(
            out / f"head_e{epoch}.npz",
            weight=head.weight.detach().numpy(),
            bias=head.bias.detach().numpy(),
        )
        # after every epoch, so that calibrate_cross.py can run on what a stop leaves
        seconds = time.perf_counter() - t0
        report = {
            "seed": args.seed,
            "steps": step,
            "epochs": history,
            "tokens": tokens,
            "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "lora": {
                "r": args.lora_r,
                "alpha": args.lora_alpha,
                "targets": "query,key,value,dense",
            },
            "lr": args.lr,
            "batch_size": args.batch_size,
            "context_turns": args.context_turns,
            "max_per_group": args.max_per_group,
            "excluded_sources": sorted(excluded),
            "class_counts": dict(zip(CLASSES, counts.astype(int).tolist(), strict=True)),
            "train_rows": len(train),
        }
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
        if done:
            break
    print(f"\nwrote {out} ({step} steps, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main(parse_args(Args))
