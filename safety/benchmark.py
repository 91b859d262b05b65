"""Latency of one guard check on this CPU, next to the bare encoder on the same texts.

Times, per text (one call each, batch of one, as the pipeline does):
- ``encoder``: the guard's own encoder, bare, on the lean path (tokenize -> transformer ->
  mean pool), as the artifact builds it (layers kept, adapter merged, quantisation);
- ``minilm``: the full embedded all-MiniLM-L6-v2 in fp32 on the same lean path: the encoder
  of policy 3.0, and the baseline the smaller encoder is measured against;
- ``check``: ``SafetyClassifier.classify`` (normalise + encode + head + thresholds), no context;
- ``check+ctx``: the same with three earlier user turns (newest and window encoded; the turns
  before the newest too, in a second call, when the window scores above the newest alone);
- ``reply``: ``classify(..., role="assistant")``, the output check of a model reply;
- ``st.encode``: ``SentenceTransformer.encode`` for reference;
- with ``--runtimes torch,onnx,onnx-int8``: ``encoder``, ``check`` and ``check+ctx`` again
  with the guard's encoder on each ONNX Runtime variant (``name@runtime``).

A policy whose users are read by a cross-encoder (``user_reader: cross``) runs ``check`` and
``check+ctx`` through it (one forward pass over the text pair) and ``reply`` through the head.
With the cascade of round 27 (``second_opinion``) the head is also asked about the user
messages the cross-encoder scores between its two crisis thresholds: ``second`` times the
head's own check of a message with the three turns, and the share of ``check+ctx`` calls that
asked it is printed.

Texts are hand-written user messages of at most ``max_tokens`` tokens. Prints median and p95
milliseconds and the check / encoder and check / minilm ratios; writes
``{run_dir}/benchmark.json``.

Usage:
    python safety/benchmark.py [--n 200] [--threads 0] [--artifact runs/safety/artifact]
        [--runtimes torch,onnx,onnx-int8]
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import DEFAULT_RUN_DIR, SEED_DIR, banner, parse_args, read_jsonl

from companion.safety import ClassifyItem, SafetyClassifier, normalize


@dataclass
class Args:
    n: int = field(default=200, metadata={"help": "texts to time"})
    max_tokens: int = field(default=64, metadata={"help": "longest text, in encoder tokens"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch default)"})
    warmup: int = field(default=20, metadata={"help": "untimed calls first"})
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "where to write results"})
    artifact: str = field(default="", metadata={"help": "artifact folder ('': the shipped one)"})
    runtimes: str = field(
        default="torch", metadata={"help": "guard runtimes, comma-separated: torch,onnx,onnx-int8"}
    )


def timeit(fn: Callable[[str], object], texts: list[str]) -> list[float]:
    out = []
    for t in texts:
        t0 = time.perf_counter()
        fn(t)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=20)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(q[18], 2)}


def main(args: Args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    clf = SafetyClassifier.from_defaults(artifact=args.artifact or None)
    enc = clf.encoder
    tok = enc._tokenizer  # type: ignore[attr-defined]
    pool = [
        r["text"]
        for name in ("crisis", "medical", "hard_negatives")
        for r in read_jsonl(Path(SEED_DIR) / f"{name}.jsonl")
    ]
    texts = [t for t in pool if len(tok(t)["input_ids"]) <= args.max_tokens][: args.n]
    context = [
        "I had a rough day at work",
        "my manager shouted at me again",
        "I don't know what to do about it",
    ]
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    banner(
        f"{len(texts)} texts, {min(lengths)}-{max(lengths)} tokens "
        f"(median {statistics.median(lengths):.0f}); torch threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )

    from companion.models import load_encoder
    from companion.safety.encoding import lean

    st = load_encoder()
    minilm = lean(st)
    runs = {
        "encoder": lambda t: enc.encode([normalize(t)]),
        "minilm": lambda t: minilm.encode([normalize(t)]),
        "check": lambda t: clf.classify(t),
        "check+ctx": lambda t: clf.classify(t, context=context),
        "reply": lambda t: clf.classify(t, role="assistant"),
        "st.encode": lambda t: st.encode([t]),
    }
    if clf.policy.second_opinion:
        runs["second"] = lambda t: clf._head_scores([ClassifyItem(t, context=tuple(context))])
    for runtime in [r for r in args.runtimes.split(",") if r and r != "torch"]:
        other = SafetyClassifier.from_defaults(artifact=args.artifact or None, runtime=runtime)
        runs[f"encoder@{runtime}"] = lambda t, e=other.encoder: e.encode([normalize(t)])
        runs[f"check@{runtime}"] = lambda t, c=other: c.classify(t)
        runs[f"check+ctx@{runtime}"] = lambda t, c=other: c.classify(t, context=context)
    for fn in runs.values():
        timeit(fn, texts[: args.warmup])
    # Round-robin per text, so that load from other processes hits every variant alike.
    times: dict[str, list[float]] = {name: [] for name in runs}
    for t in texts:
        for name, fn in runs.items():
            times[name] += timeit(fn, [t])
    results = {name: summary(ms) for name, ms in times.items()}
    med = {name: r["median_ms"] for name, r in results.items()}
    ratio = med["check"] / med["encoder"]
    ratio_ctx = med["check+ctx"] / med["encoder"]
    ratio_base = med["check"] / med["minilm"]
    for name, r in results.items():
        print(
            f"  {name:20s} median {r['median_ms']:7.2f} ms   p95 {r['p95_ms']:7.2f} ms   "
            f"{r['median_ms'] / med['check']:.2f}x torch check"
        )
    print(f"  guard encoder: {enc.name}; users read by: {clf.policy.user_reader}")
    print(f"  check / encoder (median): {ratio:.2f}x; check+ctx / encoder: {ratio_ctx:.2f}x")
    print(f"  check / full MiniLM fp32 encoder (median): {ratio_base:.2f}x")
    asked = None
    if clf.policy.second_opinion:
        verdicts = [clf.classify(t, context=context) for t in texts]
        asked = round(sum("crisis_second" in v.scores for v in verdicts) / len(texts), 4)
        print(f"  check+ctx calls that asked the head (rounds 27-28 cascade): {asked}")
    out = {
        **results,
        "guard_encoder": enc.name,
        "user_reader": clf.policy.user_reader,
        "policy": clf.policy_version,
        "ratio_check_over_encoder": round(ratio, 3),
        "ratio_check_ctx_over_encoder": round(ratio_ctx, 3),
        "ratio_check_over_minilm": round(ratio_base, 3),
        "second_opinion_share": asked,
        "n": len(texts),
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg()[0],
    }
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.run_dir) / "benchmark.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main(parse_args(Args))
