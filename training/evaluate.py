"""Compare the base model, the previous adapter and the tuned adapter on held-out conversations.

Metrics per model (``replies.py``): perplexity of the reference replies (assistant tokens of
the test split), the reply length distribution and the share of 20-90-word replies, the share
that end on their own, the listening checks of ``listening.py`` (reflection, open question,
unrequested directive advice, off-topic or wrong-speaker replies), output-guard decisions on
these benign prompts, and distinct-2. The prompts are the fixed prompt file plus
``--max_test_prompts`` held-out prompt conversations of the test split (every reply position
of a multi-turn dialogue, not only first messages). Decoding is the service's default
``GenerationConfig`` unless flags say otherwise, seeded. Writes ``metrics.json``,
``replies.jsonl`` (every model's reply to every prompt, for the blind side-by-side) and a
markdown report; progress and stage names go to stderr.

    python training/evaluate.py --adapter runs/sft-smollm2-cpu/adapter \
        --previous_adapter runs/prev-adapter --output_dir runs/eval
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
from common import IGNORE_INDEX, encode_chat, read_jsonl, trains_last_only
from replies import generate, heldout_prompts, reply_metrics
from tqdm import tqdm

from companion.config import GenerationConfig
from companion.models import load_causal_lm
from companion.safety import SafetyClassifier

HERE = Path(__file__).resolve().parent
_DECODING = GenerationConfig()

# (metric, target text, met?) per reported metric; a metric absent here is reported only
TARGETS: dict[str, tuple[str, Any]] = {
    "reflection_or_open_question": (">= 0.80", lambda v: v >= 0.80),
    "directive": ("<= 0.10", lambda v: v <= 0.10),
    "off_topic_or_wrong_speaker": ("<= 0.05", lambda v: v <= 0.05),
    "words_20_90": (">= 0.80", lambda v: v >= 0.80),
    "ended_on_own": (">= 0.97", lambda v: v >= 0.97),
    "guard_flagged": ("<= 0.01", lambda v: v <= 0.01),
}


@dataclass
class EvalArguments:
    adapter: str = field(metadata={"help": "the tuned PEFT adapter directory"})
    previous_adapter: str | None = field(
        default=None, metadata={"help": "the adapter it replaces, compared too"}
    )
    base_model: str | None = field(default=None, metadata={"help": "none = embedded SmolLM2"})
    data_dir: str = field(default="runs/sft-data", metadata={"help": "holds test.jsonl"})
    split: str = field(default="test", metadata={"help": "test, or validation while choosing"})
    prompts_file: str = field(default=str(HERE / "prompts" / "eval_prompts.txt"))
    output_dir: str = field(default="runs/eval")
    max_new_tokens: int = field(default=_DECODING.max_new_tokens)
    do_sample: bool = field(default=_DECODING.do_sample)
    temperature: float = field(default=_DECODING.temperature)
    top_p: float = field(default=_DECODING.top_p)
    repetition_penalty: float = field(default=_DECODING.repetition_penalty)
    max_test_examples: int | None = field(default=None, metadata={"help": "perplexity subset"})
    max_test_prompts: int = field(
        default=100, metadata={"help": "held-out prompt conversations generated"}
    )
    batch_size: int = field(default=8)
    samples_in_report: int = field(default=8)
    seed: int = field(default=13)

    def decoding(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )


def stage(text: str) -> None:
    """Say what is being done, on stderr (stdout keeps the metrics and the report)."""
    print(f"[evaluate] {text}", file=sys.stderr, flush=True)


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
    stage(f"{name}: {len(conversations)} replies, batches of {args.batch_size}")
    replies = generate(model, tokenizer, conversations, args.decoding(), args.batch_size, name)
    stage(f"{name}: listening checks and output guard on {len(replies)} replies")
    metrics = {
        "perplexity": round(ppl, 3),
        **reply_metrics(replies, conversations, guard),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"{name}: {json.dumps(metrics)}")
    return metrics, replies


def report(
    args: EvalArguments,
    metrics: dict[str, dict[str, Any]],
    prompts: list[dict[str, Any]],
    replies: dict[str, list[dict[str, Any]]],
    n_fixed: int,
) -> str:
    names = list(replies)
    tuned, base = metrics["tuned"], metrics["base"]
    ratio = tuned["perplexity"] / base["perplexity"]
    lines = [
        f"# {' vs '.join(names)}",
        "",
        f"Adapter: `{args.adapter}`"
        + (f"; previous: `{args.previous_adapter}`" if args.previous_adapter else "")
        + f". Decoding: {json.dumps(asdict(args.decoding()))}. {len(prompts)} prompts "
        f"({n_fixed} fixed, {len(prompts) - n_fixed} held-out {args.split} conversations).",
        "",
        f"| metric | {' | '.join(names)} | target (tuned) |",
        "|---|" + "---|" * (len(names) + 1),
        "| perplexity of reference replies | "
        + " | ".join(str(metrics[n]["perplexity"]) for n in names)
        + f" | <= 0.8 x base: {ratio:.3f} x, {'met' if ratio <= 0.8 else 'MISSED'} |",
    ]
    for key in (
        "reflection_or_open_question",
        "reflection",
        "open_question",
        "directive",
        "off_topic_or_wrong_speaker",
        "off_topic",
        "wrong_speaker",
        "words_20_90",
        "words_median",
        "words_p10_p90",
        "ended_on_own",
        "guard_flagged",
        "guard_check_in",
        "distinct_2",
    ):
        target = ""
        if key in TARGETS:
            text, met = TARGETS[key]
            target = f"{text}: {'met' if met(tuned[key]) else 'MISSED'}"
        lines.append(f"| {key} | {' | '.join(str(metrics[n][key]) for n in names)} | {target} |")
    lines += ["", "## Sample replies", ""]
    for i, prompt in enumerate(prompts[: args.samples_in_report]):
        for turn in prompt["conversation"]:
            lines.append(f"**{turn['role'].capitalize()}:** {turn['content']}  ")
        lines.append("")
        lines += [f"- **{n}:** {replies[n][i]['text']}" for n in names]
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses()
    test = read_jsonl(Path(args.data_dir) / f"{args.split}.jsonl")
    fixed = [
        line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()
    ]
    prompts: list[dict[str, Any]] = [
        {"conversation": [{"role": "user", "content": p}], "reference": None, "source": "fixed"}
        for p in fixed
    ]
    prompts += heldout_prompts(test, args.max_test_prompts, args.seed)
    conversations = [p["conversation"] for p in prompts]
    test = test[: args.max_test_examples]
    stage(
        f"{len(test)} {args.split} examples for perplexity; {len(prompts)} prompts "
        f"({len(fixed)} fixed, {len(prompts) - len(fixed)} held-out conversations)"
    )
    stage("loading the safety guard")
    guard = SafetyClassifier.from_defaults()
    models = {"base": None, "previous": args.previous_adapter, "tuned": args.adapter}
    metrics: dict[str, dict[str, Any]] = {}
    replies: dict[str, list[dict[str, Any]]] = {}
    for name, adapter in models.items():
        if name == "previous" and adapter is None:
            continue
        stage(f"{name}: loading the model" + (f" with {adapter} merged" if adapter else ""))
        model, tokenizer = load_causal_lm(args.base_model, adapter, merge_adapter=bool(adapter))
        metrics[name], replies[name] = evaluate_model(
            name, model, tokenizer, test, conversations, guard, args
        )
        del model
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ratio = round(metrics["tuned"]["perplexity"] / metrics["base"]["perplexity"], 3)
    summary = {
        "args": asdict(args),
        "prompts": {"fixed": len(fixed), "heldout_conversations": len(prompts) - len(fixed)},
        **metrics,
        "ratio": {"perplexity_tuned_over_base": ratio},
        "guard_policy": guard.policy_version,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "replies.jsonl").open("w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts):
            row = {**prompt, **{name: replies[name][i] for name in replies}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    md = report(args, metrics, prompts, replies, len(fixed))
    (out / "report.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
