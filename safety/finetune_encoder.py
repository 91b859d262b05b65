"""Step 2 of 5: fine-tune the sentence encoder for the guard (SetFit's body step, with LoRA).

A linear head on the frozen all-MiniLM-L6-v2 cannot tell "this exam is killing me" from "I want
to kill myself" at high recall: the embeddings put them close together. This step trains a LoRA
adapter on the encoder's attention and feed-forward layers with a temporary classification head
(four logits: user crisis / medical, assistant crisis / medical; each row is scored on its own
role's two), so that mean-pooled embeddings separate the classes. ``train.py`` then fits the
shipped logistic-regression head on the tuned embeddings, as SetFit does after its body step.

Rows: the train split of ``prepare.py`` without conversation context (the label of a context row
belongs to the conversation, not to its newest message; the head and the rise rule handle
context), sources in ``--exclude`` left out. Public sources are sampled to at most
``--max_per_group`` rows per (source, role, label) each epoch; hand-written rows are all used.
Texts are normalised exactly as at run time. The validation split only reports AUPRC per epoch.

``--supcon W`` adds W times a supervised contrastive loss (Khosla et al., 2020) over each batch's
embeddings: rows of the same (role, label) are pulled together, all others pushed apart, at
temperature ``--supcon_temp``. This is closer to SetFit's own contrastive body step; off by
default (see the classifier card for what it measured).

``--layers N`` trains on the encoder's first N layers only (a faster encoder; ``train.py`` reads
the number from ``encoder_report.json`` and the policy records it).

Writes ``{run_dir}/encoder_adapter/`` (PEFT ``save_pretrained``, weights stored as fp16) and
``encoder_report.json``.

Usage:
    python safety/finetune_encoder.py [--run_dir runs/safety] [--epochs 3] [--max_steps 0]
        [--layers 0]
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    ADAPTER_DIR,
    DEFAULT_RUN_DIR,
    LABEL_HITS,
    LABELS,
    banner,
    parse_args,
    read_jsonl,
)

from companion.safety import normalize

COLUMNS = [(role, label) for role in ("user", "assistant") for label in LABELS]


@dataclass
class Args:
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "folder from prepare.py"})
    encoder: str = field(default="embedded", metadata={"help": "'embedded' or an ST path/id"})
    seed: int = field(default=13, metadata={"help": "seed for sampling, order and init"})
    epochs: int = field(default=3, metadata={"help": "passes over the (sampled) rows"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0: none)"})
    batch_size: int = field(default=32, metadata={"help": "rows per step"})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (LoRA and head)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    max_length: int = field(default=96, metadata={"help": "tokens per text in training"})
    max_per_group: int = field(default=500, metadata={"help": "public rows per group and epoch"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch default)"})
    exclude: str = field(default="cssrs", metadata={"help": "sources not trained on"})
    layers: int = field(
        default=0, metadata={"help": "train on the encoder's first N layers only (0: all)"}
    )
    supcon: float = field(default=0.0, metadata={"help": "weight of the contrastive loss"})
    supcon_temp: float = field(default=0.1, metadata={"help": "its temperature"})

    def __post_init__(self) -> None:
        if self.layers < 0:
            raise ValueError("need layers >= 0 (0: all)")
        if self.supcon < 0 or self.supcon_temp <= 0:
            raise ValueError("need supcon >= 0 and supcon_temp > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("need epochs >= 1, batch_size >= 1 and max_length >= 8")


def usable(rows: list[dict[str, Any]], excluded: set[str]) -> list[dict[str, Any]]:
    """Rows whose label is a property of their own text: no context, or a conversation turn
    up to its first risk turn (``own_label``) that answers no check-in."""
    return [
        r
        for r in rows
        if (not r.get("context") or (r.get("own_label") and not r.get("last_assistant")))
        and r["source"] not in excluded
    ]


def epoch_rows(rows: list[dict[str, Any]], cap: int, rng: random.Random) -> list[dict[str, Any]]:
    """All hand-written rows and conversation turns plus at most ``cap`` rows per public
    (source, role, label)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["source"], r["role"], r["label"])].append(r)
    out = []
    for key in sorted(groups):
        group = groups[key]
        if key[0] not in ("handwritten", "dialogues", "style") and cap and len(group) > cap:
            group = rng.sample(group, cap)
        out += group
    return out


def batches(rows: list[dict[str, Any]], size: int, rng: random.Random) -> list[list[int]]:
    """Length-grouped batches in random order: rows of similar length share a batch."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]["text"]), rng.random()))
    out = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(out)
    return out


def class_ids(rows: list[dict[str, Any]]) -> np.ndarray:
    """The classes of the contrastive loss: one integer per (role, label) of each row."""
    names = [
        (role, label) for role in ("user", "assistant") for label in (*LABELS, "check_in", "none")
    ]
    return np.array([names.index((r["role"], r["label"])) for r in rows], dtype=np.int64)


def supcon_loss(emb: Any, classes: Any, temperature: float) -> Any:
    """Supervised contrastive loss of unit-norm ``emb`` (Khosla et al., 2020): for each row with
    another row of its class in the batch, minus the mean log-probability of those rows among
    all other rows, with similarities ``cos / temperature``. Zero when no row has a partner."""
    import torch

    n = emb.shape[0]
    logits = emb @ emb.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    same = (classes[:, None] == classes[None, :]) & ~self_mask
    count = same.sum(1)
    anchors = count > 0
    if not bool(anchors.any()):
        return emb.sum() * 0.0
    pos = log_prob.masked_fill(~same, 0.0).sum(1)
    return -(pos[anchors] / count[anchors]).mean()


def targets_and_mask(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """0/1 targets over the four columns, and which columns each row is scored on."""
    y = np.zeros((len(rows), len(COLUMNS)), dtype=np.float32)
    m = np.zeros_like(y)
    for i, r in enumerate(rows):
        for j, (role, label) in enumerate(COLUMNS):
            if r["role"] == role:
                m[i, j] = 1.0
                y[i, j] = float(r["label"] in LABEL_HITS[label])
    return y, m


class Tuner:
    """The encoder with LoRA plus the temporary head, and one training step."""

    def __init__(self, args: Args, pos_weight: np.ndarray) -> None:
        import torch
        from _common import load_encoder_for
        from peft import LoraConfig, get_peft_model

        encoder = load_encoder_for(args.encoder, layers=args.layers)
        self.tokenizer = encoder.model[0].tokenizer
        base = encoder.model[0].auto_model
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.05,
            target_modules=["query", "key", "value", "dense"],
            bias="none",
        )
        self.model = get_peft_model(base, config)
        self.head = torch.nn.Linear(base.config.hidden_size, len(COLUMNS))
        self.scale = 10.0  # embeddings are unit-norm: a fixed scale lets the logits spread
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            [{"params": params}, {"params": self.head.parameters(), "lr": args.lr * 10}],
            lr=args.lr,
            weight_decay=0.01,
        )
        self.pos_weight = torch.tensor(pos_weight, dtype=torch.float32)
        self.supcon = args.supcon  # weight; main() passes classes only when it is set
        self.supcon_temp = args.supcon_temp
        self.max_length = args.max_length
        self.trainable = sum(p.numel() for p in params)
        self.last_tokens = 0

    def embed(self, texts: list[str]) -> Any:
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.model(**batch).last_hidden_state
        self.last_tokens = int(batch["attention_mask"].sum())
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def step(
        self,
        texts: list[str],
        y: np.ndarray,
        m: np.ndarray,
        w: np.ndarray,
        classes: np.ndarray | None = None,
    ) -> float:
        """One optimiser step; returns the loss. ``self.last_tokens``: real tokens in it.
        ``classes`` (one id per row) feed the contrastive loss when ``--supcon`` is set."""
        import torch

        self.model.train()
        emb = self.embed(texts)
        logits = self.head(emb * self.scale)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(y), pos_weight=self.pos_weight, reduction="none"
        )
        loss = (loss * torch.from_numpy(m) * torch.from_numpy(w)[:, None]).sum() / max(
            float(m.sum()), 1.0
        )
        if classes is not None:
            loss = loss + self.supcon * supcon_loss(
                emb, torch.from_numpy(classes), self.supcon_temp
            )
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
        self.opt.step()
        return float(loss.item())

    def scores(self, texts: list[str], size: int = 64) -> np.ndarray:
        import torch

        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                emb = self.embed(texts[start : start + size])
                out.append(torch.sigmoid(self.head(emb * self.scale)).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(COLUMNS)), np.float32)


def val_report(tuner: Tuner, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Validation AUPRC per (role, label) column, from the temporary head."""
    from sklearn.metrics import average_precision_score

    texts = [normalize(r["text"]) for r in rows]
    order = np.argsort([len(t) for t in texts], kind="stable")
    scores = np.empty((len(rows), len(COLUMNS)), dtype=np.float32)
    scores[order] = tuner.scores([texts[i] for i in order])
    y, m = targets_and_mask(rows)
    out = {}
    for j, (role, label) in enumerate(COLUMNS):
        sel = m[:, j] == 1
        if sel.any() and 0 < y[sel, j].sum() < sel.sum():
            ap = average_precision_score(y[sel, j], scores[sel, j])
            out[f"{role}/{label}"] = round(float(ap), 4)
    return out


def save_fp16(model: Any, out: Path, base_name: str) -> None:
    """``save_pretrained`` with the adapter weights stored as fp16 (half the size; merged into
    the fp32 encoder at load time)."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(out))
    config = json.loads((out / "adapter_config.json").read_text("utf-8"))
    config["base_model_name_or_path"] = base_name  # not this machine's install path
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    path = out / "adapter_model.safetensors"
    weights = {k: v.half().contiguous() for k, v in load_file(str(path)).items()}
    save_file(weights, str(path), metadata={"format": "pt"})


def main(args: Args) -> None:
    import torch

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    run = Path(args.run_dir)
    excluded = {s for s in args.exclude.split(",") if s}
    train = usable(read_jsonl(run / "splits" / "train.jsonl"), excluded)
    val = usable(read_jsonl(run / "splits" / "val.jsonl"), excluded)
    y_all, m_all = targets_and_mask(train)
    pos = (y_all * m_all).sum(0)
    neg = ((1 - y_all) * m_all).sum(0)
    pos_weight = np.clip(neg / np.maximum(pos, 1.0), 1.0, 10.0)
    banner(f"{len(train)} train rows without context, {len(val)} validation rows")
    for j, (role, label) in enumerate(COLUMNS):
        print(f"  {role:9s} {label:8s} positives {int(pos[j]):5d}  pos_weight {pos_weight[j]:.2f}")

    tuner = Tuner(args, pos_weight)
    if args.supcon:
        print(f"  contrastive loss weight {args.supcon}, temperature {args.supcon_temp}")
    if args.layers:
        print(f"  encoder cut to its first {args.layers} layers")
    print(f"  LoRA r={args.lora_r} on query/key/value/dense: {tuner.trainable:,} trainable")
    history: list[dict[str, Any]] = []
    step, tokens, t0 = 0, 0, time.perf_counter()
    done = False
    for epoch in range(1, args.epochs + 1):
        rows = epoch_rows(train, args.max_per_group, rng)
        plan = batches(rows, args.batch_size, rng)
        banner(f"epoch {epoch}/{args.epochs}: {len(rows)} rows, {len(plan)} steps")
        losses = []
        for idx in plan:
            part = [rows[i] for i in idx]
            texts = [normalize(r["text"]) for r in part]
            y, m = targets_and_mask(part)
            w = np.array([r["weight"] for r in part], dtype=np.float32)
            classes = class_ids(part) if args.supcon else None
            losses.append(tuner.step(texts, y, m, w, classes))
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
        auprc = val_report(tuner, val)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **auprc})
        print(f"  epoch {epoch}: mean loss {np.mean(losses):.4f}; val AUPRC {auprc}")
        if done:
            break
    seconds = time.perf_counter() - t0
    out = run / ADAPTER_DIR
    save_fp16(tuner.model, out, args.encoder)
    report = {
        "encoder": args.encoder,
        "layers": args.layers,
        "seed": args.seed,
        "steps": step,
        "epochs": history,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "targets": "query,key,value,dense"},
        "lr": args.lr,
        "supcon": {"weight": args.supcon, "temperature": args.supcon_temp},
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "max_per_group": args.max_per_group,
        "excluded_sources": sorted(excluded),
        "train_rows": len(train),
    }
    (run / "encoder_report.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"\nwrote {out} and encoder_report.json ({step} steps, {seconds:.0f} s)")


if __name__ == "__main__":
    main(parse_args(Args))
