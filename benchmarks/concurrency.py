"""Concurrent sessions through `companion serve` on the embedded model (issue 15's curve).

Starts `companion serve` in a child process (sessions in memory, greedy decoding, a fixed
`--max-new-tokens`, the generation queue deep enough that nothing is refused), then for each
level N of `--levels` runs N clients at once on loopback. Each client sends `--turns` messages,
one at a time, each in a fresh session (so every prompt has the same shape), or with
`--conversation` all in one session (the prompt grows with the turns before, as in use).
Only turns the guard answered count (a redirected turn runs no model); their reply tokens are
counted with the embedded tokenizer. Prints, per level: aggregate reply tokens/s over the
level's wall time, p50 and p99 turn latency, and each as a ratio against N=1 measured in the
same run. Writes the table as JSON and a PNG of the curve (`--out`).

With `--batch-size 1` (the default setting) generation runs one request at a time: flat
tokens/s, latency growing with N. `--batch-size 8` sets `generation_batch_size`: concurrent
turns share decoding steps on the model (`companion.models.batching`). `--guard-runtime onnx`
sets `guard_runtime`. Issue 15's target at 8 sessions: >= 4x the tokens/s of one and <= 2.5x
its p50.

Usage:
    python benchmarks/concurrency.py [--levels 1,2,4,8] [--turns 2] [--max-new-tokens 32]
        [--batch-size 8] [--guard-runtime onnx] [--conversation]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

from load import _pct, start_server

# Ordinary messages that policy 3.4 answers (checked; its false positives, such as "I think I
# need a holiday.", would make turns model-free).
MESSAGES = [
    "I finally finished a big project today.",
    "My sister is visiting next week and I am excited.",
    "I started learning to bake bread.",
    "Can you recommend a good book?",
    "How can I get better at making small talk?",
    "What's a nice way to start a journal?",
    "I'd like some ideas for a rainy Sunday.",
    "How do I get better at chess?",
]


def _level(
    target: str, n: int, turns: int, tokenizer: object, conversation: bool = False
) -> dict[str, float]:
    from companion.client import CompanionClient
    from companion.types import Action

    latencies: list[float] = []
    tokens = [0]
    answered = [0]
    lock = threading.Lock()
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            with CompanionClient(target, timeout=600) as cl:
                for t in range(turns):
                    if t == 0 or not conversation:
                        sid = cl.create_session()
                    text = MESSAGES[(k * turns + t) % len(MESSAGES)]
                    t0 = time.perf_counter()
                    reply = cl.send(sid, text)
                    ms = (time.perf_counter() - t0) * 1000
                    if reply.action is not Action.ANSWERED:
                        continue
                    count = len(tokenizer(reply.text)["input_ids"])  # type: ignore[operator]
                    with lock:
                        latencies.append(ms)
                        tokens[0] += count
                        answered[0] += 1
        except Exception as exc:  # reported, never hidden
            errors.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {
        "sessions": n,
        "turns": n * turns,
        "answered": answered[0],
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "tokens": tokens[0],
        "tokens_per_s": round(tokens[0] / wall, 2),
        "p50_ms": round(_pct(latencies, 0.5), 1),
        "p99_ms": round(_pct(latencies, 0.99), 1),
    }


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]
    n = [r["sessions"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [r["tokens_per_s"] / base["tokens_per_s"] for r in rows], "o-", label="tokens/s")
    ax.plot(n, [r["p50_ms"] / base["p50_ms"] for r in rows], "s-", label="p50 latency")
    ax.plot(n, n, ":", color="grey", label="linear")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("ratio to 1 session")
    ax.legend()
    ax.set_title("companion serve, embedded SmolLM2-135M, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,2,4,8", help="concurrent sessions, comma-separated")
    ap.add_argument("--turns", type=int, default=2, help="turns per client and level")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1, help="generation_batch_size")
    ap.add_argument("--guard-runtime", default="torch", help="guard_runtime: torch, onnx...")
    ap.add_argument("--dtype", default="auto", help="generation_dtype: auto, float32, bfloat16")
    ap.add_argument(
        "--conversation", action="store_true", help="each client's turns in one session"
    )
    ap.add_argument("--out", default="benchmarks/out/concurrency", help="JSON and PNG prefix")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if levels[0] != 1:
        raise SystemExit("--levels must start at 1 (the baseline)")

    from transformers import AutoTokenizer

    from companion.client import CompanionClient
    from companion.models.lm import resolve_base

    tokenizer = AutoTokenizer.from_pretrained(resolve_base(None)[0])
    server, target, _ = start_server(
        {
            "COMPANION_MAX_NEW_TOKENS": str(args.max_new_tokens),
            "COMPANION_DO_SAMPLE": "false",
            "COMPANION_TORCH_THREADS": str(args.torch_threads),
            "COMPANION_GENERATION_QUEUE_DEPTH": str(max(levels) * 2),
            "COMPANION_GENERATION_BATCH_SIZE": str(args.batch_size),
            "COMPANION_GUARD_RUNTIME": args.guard_runtime,
            "COMPANION_GENERATION_DTYPE": args.dtype,
            "OMP_NUM_THREADS": str(args.torch_threads),
        }
    )
    rows = []
    try:
        with CompanionClient(target) as cl:
            cl.wait_ready(timeout=600)
        _level(target, 1, 1, tokenizer)  # warm-up, not reported
        for n in levels:
            rows.append(_level(target, n, args.turns, tokenizer, args.conversation))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(60)
    base = rows[0]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}; "
        f"torch threads {args.torch_threads}; generation_batch_size {args.batch_size}; "
        f"guard_runtime {args.guard_runtime}; generation_dtype {args.dtype}; "
        f"greedy, {args.max_new_tokens} new tokens; "
        f"{args.turns} turns per client, "
        + ("all in one session" if args.conversation else "a fresh session each")
    )
    print("| sessions | answered | tokens/s | x 1 session | p50 ms | x | p99 ms | x |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sessions']} | {r['answered']}/{r['turns']} | {r['tokens_per_s']:.1f} | "
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['p50_ms']:.0f} | "
            f"{r['p50_ms'] / base['p50_ms']:.2f}x | {r['p99_ms']:.0f} | "
            f"{r['p99_ms'] / base['p99_ms']:.2f}x |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", "utf-8")
    _plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
