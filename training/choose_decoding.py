"""Choose the service's default decoding on the validation split, by a rule fixed in advance.

Every candidate decodes the same held-out validation prompt conversations (``replies.py``)
with the tuned adapter, up to 200 new tokens, seeded. The rule, written before any number:

1. keep the candidates whose replies end on their own within 200 tokens for >= 0.97 of the
   prompts and whose output-guard flags stay <= 0.02;
2. of those, take the highest listening score (reflection or open question, less unrequested
   directive advice, less off-topic or wrong-speaker replies); scores within 0.02 of the best
   count as tied, and a tie goes to the larger share of 20-90-word replies, then distinct-2;
3. ``max_new_tokens`` is then the smallest of 120, 160, 200 within which >= 0.97 of the chosen
   candidate's replies end (a reply that ends within a cap is the same under a larger one:
   same prompt, same seed).

Writes ``decoding.json`` (every candidate's metrics and the choice) to ``--output_dir``.

    python training/choose_decoding.py --adapter runs/sft-smollm2-cpu/adapter \\
        --output_dir runs/decoding
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import read_jsonl
from replies import generate, heldout_prompts, listening_score, reply_metrics

from companion.config import GenerationConfig
from companion.models import load_causal_lm
from companion.safety import SafetyClassifier

CAPS = (120, 160, 200)
# (do_sample, temperature, top_p, repetition_penalty)
CANDIDATES = (
    (False, 1.0, 1.0, 1.0),
    (False, 1.0, 1.0, 1.15),
    (False, 1.0, 1.0, 1.3),
    (True, 0.5, 0.9, 1.1),
    (True, 0.5, 0.9, 1.2),
    (True, 0.7, 0.9, 1.1),
    (True, 0.7, 0.9, 1.2),
    (True, 0.9, 0.9, 1.1),
    (True, 0.9, 0.9, 1.2),
)


@dataclass
class ChooseArguments:
    adapter: str = field(metadata={"help": "the tuned PEFT adapter directory"})
    base_model: str | None = field(default=None, metadata={"help": "none = embedded SmolLM2"})
    data_dir: str = field(default="runs/sft-data", metadata={"help": "holds validation.jsonl"})
    output_dir: str = field(default="runs/decoding")
    max_prompts: int = field(default=48, metadata={"help": "validation prompt conversations"})
    batch_size: int = field(default=8)
    seed: int = field(default=13)


def choose(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rule's pick among ``results`` (each with ``metrics`` and ``score``), or None."""
    ok = [
        r
        for r in results
        if r["metrics"]["ended_on_own"] >= 0.97 and r["metrics"]["guard_flagged"] <= 0.02
    ]
    if not ok:
        return None
    best = max(r["score"] for r in ok)
    tied = [r for r in ok if r["score"] >= best - 0.02]
    return max(tied, key=lambda r: (r["metrics"]["words_20_90"], r["metrics"]["distinct_2"]))


def smallest_cap(tokens: list[int], ended: list[bool]) -> int:
    for cap in CAPS:
        if sum(e and t < cap for t, e in zip(tokens, ended, strict=True)) >= 0.97 * len(tokens):
            return cap
    return CAPS[-1]


def main() -> None:
    (args,) = HfArgumentParser(ChooseArguments).parse_args_into_dataclasses()
    validation = read_jsonl(Path(args.data_dir) / "validation.jsonl")
    prompts = heldout_prompts(validation, args.max_prompts, args.seed)
    conversations = [p["conversation"] for p in prompts]
    guard = SafetyClassifier.from_defaults()
    model, tokenizer = load_causal_lm(args.base_model, args.adapter, merge_adapter=True)
    results = []
    for do_sample, temperature, top_p, penalty in CANDIDATES:
        config = GenerationConfig(
            max_new_tokens=CAPS[-1],
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=penalty,
            seed=args.seed,
        )
        name = f"{'T' + str(temperature) if do_sample else 'greedy'} rp{penalty}"
        replies = generate(model, tokenizer, conversations, config, args.batch_size, name)
        metrics = reply_metrics(replies, conversations, guard)
        result = {
            "decoding": asdict(config),
            "metrics": metrics,
            "score": round(listening_score(metrics), 3),
            "tokens": [r["tokens"] for r in replies],
            "ended": [r["ended"] for r in replies],
        }
        print(json.dumps({"decoding": name, "score": result["score"], **metrics}), flush=True)
        results.append(result)
    picked = choose(results)
    choice = None
    if picked is not None:
        choice = {
            **picked["decoding"],
            "max_new_tokens": smallest_cap(picked["tokens"], picked["ended"]),
            "score": picked["score"],
        }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decoding.json").write_text(
        json.dumps({"prompts": len(prompts), "candidates": results, "choice": choice}, indent=2)
        + "\n"
    )
    print(json.dumps({"choice": choice}))


if __name__ == "__main__":
    main()
