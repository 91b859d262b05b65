"""Compare the base model and the tuned adapter on held-out data and a fixed prompt set.

Metrics per model: perplexity of the reference answers (assistant tokens of the test split),
share of replies that end on their own before the token limit, mean reply length, distinct-2,
and the share of replies our output guard flags. The prompts are the fixed prompt file plus the
first ``--max_test_prompts`` DISTINCT test conversations (counsel-chat has several answers to
one question, so the test split repeats prompts). Writes ``metrics.json`` and a markdown report
with side-by-side sample dialogues; progress and stage names go to stderr.

    python training/evaluate.py --adapter runs/sft-smollm2-cpu/adapter --output_dir runs/eval
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IGNORE_INDEX, encode_chat, read_jsonl, trains_last_only, with_system
from tqdm import tqdm

from companion.models import load_causal_lm, render_chat, stop_token_ids
from companion.safety import ClassifyItem, SafetyClassifier
from companion.types import Category, Role

HERE = Path(__file__).resolve().parent


@dataclass
class EvalArguments:
    adapter: str = field(metadata={"help": "the tuned PEFT adapter directory"})
    base_model: str | None = field(default=None, metadata={"help": "none = embedded SmolLM2"})
    data_dir: str = field(default="runs/sft-data", metadata={"help": "holds test.jsonl"})
    prompts_file: str = field(default=str(HERE / "prompts" / "eval_prompts.txt"))
    output_dir: str = field(default="runs/eval")
    max_new_tokens: int = field(default=200)
    repetition_penalty: float = field(default=1.15)
    max_test_examples: int | None = field(default=None, metadata={"help": "perplexity subset"})
    max_test_prompts: int = field(
        default=30, metadata={"help": "distinct test-split conversations generated"}
    )
    batch_size: int = field(default=8)
    samples_in_report: int = field(default=6)
    seed: int = field(default=13)


def stage(text: str) -> None:
    """Say what is being done, on stderr (stdout keeps the metrics and the report)."""
    print(f"[evaluate] {text}", file=sys.stderr, flush=True)


def distinct_conversations(test: list[dict[str, Any]], limit: int) -> list[list[dict[str, str]]]:
    """The first ``limit`` distinct prompt conversations (all turns before the reply)."""
    seen: set[str] = set()
    out: list[list[dict[str, str]]] = []
    for ex in test:
        conversation = ex["messages"][:-1]
        key = json.dumps(conversation, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(conversation)
        if len(out) == limit:
            break
    return out


@torch.inference_mode()
def perplexity(model: Any, tokenizer: Any, examples: list[dict[str, Any]], name: str) -> float:
    nll, count = 0.0, 0
    for ex in tqdm(examples, desc=f"{name}: perplexity", unit="example", file=sys.stderr):
        enc = encode_chat(tokenizer, ex["messages"], 4096, trains_last_only(ex))
        if enc is None:
            continue
        ids = torch.tensor([enc["input_ids"]], device=model.device)
        labels = torch.tensor([enc["labels"]], device=model.device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        nll += float(loss)
        count += int((target != IGNORE_INDEX).sum())
    return math.exp(nll / max(count, 1))


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    args: EvalArguments,
    name: str = "model",
) -> list[dict[str, Any]]:
    tokenizer.padding_side = "left"
    stop_ids = stop_token_ids(tokenizer, model)
    out: list[dict[str, Any]] = []
    starts = range(0, len(conversations), args.batch_size)
    bar = tqdm(total=len(conversations), desc=f"{name}: generating", unit="reply", file=sys.stderr)
    for i in starts:
        batch = conversations[i : i + args.batch_size]
        texts = [render_chat(tokenizer, with_system(c), add_generation_prompt=True) for c in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        gen = model.generate(
            **enc,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            repetition_penalty=args.repetition_penalty,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            ended = any(t in stop_ids for t in row)
            if ended:
                row = row[: min(row.index(t) for t in stop_ids if t in row)]
            out.append(
                {
                    "text": tokenizer.decode(row, skip_special_tokens=True).strip(),
                    "tokens": len(row),
                    "ended": ended,
                }
            )
        bar.update(len(batch))
    bar.close()
    return out


def distinct_2(texts: list[str]) -> float:
    bigrams = [tuple(w[i : i + 2]) for w in (t.split() for t in texts) for i in range(len(w) - 1)]
    return len(set(bigrams)) / max(len(bigrams), 1)


def evaluate_model(
    name: str,
    model: Any,
    tokenizer: Any,
    test: list[dict[str, Any]],
    conversations: list[list[dict[str, str]]],
    guard: SafetyClassifier,
    args: EvalArguments,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    t0 = time.perf_counter()
    stage(f"{name}: perplexity of {len(test)} reference answers")
    ppl = perplexity(model, tokenizer, test, name)
    stage(f"{name}: {len(conversations)} greedy replies, batches of {args.batch_size}")
    replies = generate(model, tokenizer, conversations, args, name)
    stage(f"{name}: output guard on {len(replies)} replies")
    verdicts = guard.classify_batch(
        [ClassifyItem(r["text"] or " ", Role.ASSISTANT) for r in replies]
    )
    flagged = [v.category is not Category.NONE for v in verdicts]
    metrics = {
        "perplexity": round(ppl, 3),
        "ended_on_own": round(sum(r["ended"] for r in replies) / len(replies), 3),
        "mean_reply_tokens": round(sum(r["tokens"] for r in replies) / len(replies), 1),
        "distinct_2": round(distinct_2([r["text"] for r in replies]), 3),
        "guard_flagged": round(sum(flagged) / len(replies), 3),
        "replies": len(replies),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"{name}: {json.dumps(metrics)}")
    return metrics, replies


def report(
    args: EvalArguments,
    metrics: dict[str, dict[str, Any]],
    prompts: list[str],
    base: list[dict[str, Any]],
    tuned: list[dict[str, Any]],
    n_fixed: int,
) -> str:
    b, t = metrics["base"], metrics["tuned"]
    ratio = t["perplexity"] / b["perplexity"]
    rows = [
        (
            "Held-out perplexity of reference answers",
            b["perplexity"],
            t["perplexity"],
            f"tuned <= 0.8 x base: {ratio:.3f} x, {'met' if ratio <= 0.8 else 'MISSED'}",
        ),
        (
            f"Replies ending on their own within {args.max_new_tokens} tokens",
            b["ended_on_own"],
            t["ended_on_own"],
            f">= 0.95: {'met' if t['ended_on_own'] >= 0.95 else 'MISSED'}",
        ),
        (
            "Output-guard flags on replies to benign prompts",
            b["guard_flagged"],
            t["guard_flagged"],
            f"<= 0.02: {'met' if t['guard_flagged'] <= 0.02 else 'MISSED'}",
        ),
        ("Mean reply length (tokens)", b["mean_reply_tokens"], t["mean_reply_tokens"], ""),
        ("Distinct-2", b["distinct_2"], t["distinct_2"], ""),
    ]
    lines = [
        "# Base vs tuned",
        "",
        f"Adapter: `{args.adapter}`; greedy decoding, repetition "
        f"penalty {args.repetition_penalty}; {b['replies']} prompts ({n_fixed} fixed, "
        f"{b['replies'] - n_fixed} distinct test conversations).",
        "",
        "| metric | base | tuned | target |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {x} | {y} | {z} |" for m, x, y, z in rows]
    lines += ["", "## Sample dialogues", ""]
    for p, rb, rt in list(zip(prompts, base, tuned, strict=True))[: args.samples_in_report]:
        lines += [
            f"**User:** {p}",
            "",
            f"- **base:** {rb['text']}",
            f"- **tuned:** {rt['text']}",
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses()
    torch.manual_seed(args.seed)
    test = read_jsonl(Path(args.data_dir) / "test.jsonl")[: args.max_test_examples]
    fixed = [
        line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()
    ]
    conversations = [[{"role": "user", "content": p}] for p in fixed]
    from_test = distinct_conversations(test, args.max_test_prompts)
    conversations += from_test
    prompts = [c[-1]["content"] for c in conversations]
    stage(
        f"{len(test)} test examples for perplexity; {len(conversations)} prompts "
        f"({len(fixed)} fixed, {len(from_test)} distinct test conversations)"
    )
    stage("loading the safety guard")
    guard = SafetyClassifier.from_defaults()

    stage("base: loading the model")
    base_model, tokenizer = load_causal_lm(args.base_model)
    metrics: dict[str, dict[str, Any]] = {}
    metrics["base"], base_replies = evaluate_model(
        "base", base_model, tokenizer, test, conversations, guard, args
    )
    del base_model
    stage(f"tuned: loading the model with {args.adapter} merged")
    tuned_model, tokenizer = load_causal_lm(args.base_model, args.adapter, merge_adapter=True)
    metrics["tuned"], tuned_replies = evaluate_model(
        "tuned", tuned_model, tokenizer, test, conversations, guard, args
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics["ratio"] = {
        "perplexity_tuned_over_base": round(
            metrics["tuned"]["perplexity"] / metrics["base"]["perplexity"], 3
        )
    }
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "args": asdict(args),
                "prompts": {"fixed": len(fixed), "distinct_test_conversations": len(from_test)},
                **metrics,
                "guard_policy": guard.policy_version,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "replies.jsonl").write_text(
        "".join(
            json.dumps({"prompt": p, "base": b, "tuned": t}, ensure_ascii=False) + "\n"
            for p, b, t in zip(prompts, base_replies, tuned_replies, strict=True)
        )
    )
    md = report(args, metrics, prompts, base_replies, tuned_replies, len(fixed))
    (out / "report.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
