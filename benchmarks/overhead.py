"""What a turn costs beyond generation: bare `model.generate`, the library, the gRPC server.

For each prompt, one after another and never at once (round-robin, in this order):
- ``bare``: `model.generate` on the embedded model (the library's own model object), on the
  prompt the pipeline builds for a first turn (system prompt + message), greedy, the library's
  repetition penalty and stop tokens;
- ``library``: `Companion.send` in a fresh session (input guard, context, generation with
  check-before-release, output guard, store in memory);
- ``grpc``: `CompanionClient.send` in a fresh session against `companion serve` in a child
  process on loopback (same model, settings and threads; the client's wall time).

A prompt counts only when all three produced the same reply text (a redirected or checked-in
turn is different work). Prints the machine, load average, settings and the medians with
ratios against ``bare`` (issue 15's target: everything but generation <= 5% of a turn).

Usage:
    python benchmarks/overhead.py [--n 12] [--max-new-tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from load import start_server
from streaming import PROMPTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12, help="prompts to time")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    args = ap.parse_args()

    import torch

    from companion import Action, Companion, GenerationConfig, PipelineConfig
    from companion.client import CompanionClient
    from companion.prompts import SYSTEM_PROMPT

    torch.set_num_threads(args.threads)
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
    c = Companion.from_defaults("memory", config=PipelineConfig(generation=gen_cfg))
    gen = c.pipeline.generator
    model, tok = gen.model, gen.tokenizer
    server, target, _ = start_server(
        {
            "COMPANION_MAX_NEW_TOKENS": str(args.max_new_tokens),
            "COMPANION_DO_SAMPLE": "false",
            "COMPANION_TORCH_THREADS": str(args.threads),
            "OMP_NUM_THREADS": str(args.threads),
        }
    )

    def bare(text: str) -> tuple[float, str]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
        ids = tok(gen.render(messages), add_special_tokens=False, return_tensors="pt")
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=gen_cfg.repetition_penalty,
                eos_token_id=gen._stop_ids,
                pad_token_id=tok.pad_token_id,
            )
        elapsed = time.perf_counter() - t0
        return elapsed, tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    rows: list[tuple[float, float, float]] = []
    skipped: list[str] = []
    try:
        with CompanionClient(target, timeout=600) as cl:
            cl.wait_ready(timeout=600)
            cl.send(cl.create_session(), "Hello")  # warm-up, both sides
            c.start_session().send("Hello")
            bare("Hello")
            for text in (PROMPTS * 4)[: args.n]:
                t_bare, bare_text = bare(text)
                t0 = time.perf_counter()
                lib = c.start_session().send(text)
                t_lib = time.perf_counter() - t0
                sid = cl.create_session()
                t0 = time.perf_counter()
                remote = cl.send(sid, text)
                t_grpc = time.perf_counter() - t0
                if lib.action is not Action.ANSWERED or remote.action is not Action.ANSWERED:
                    skipped.append(f"{lib.action.value}/{remote.action.value}")
                elif not (lib.text == remote.text == bare_text.strip()):
                    skipped.append("different text")
                else:
                    rows.append((t_bare, t_lib, t_grpc))
    finally:
        server.terminate()
        server.wait(60)
        c.close()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, threads {args.threads}; "
        f"greedy, max_new_tokens {args.max_new_tokens}; guard {c.pipeline.guard.policy_version}"
    )
    print(f"{len(rows)} prompts compared; left out: {skipped or 'none'}")
    if not rows:
        return
    b, lib_ms, grpc_ms = (statistics.median(col) * 1000 for col in zip(*rows, strict=True))
    per_prompt = [(lib / bb, g / bb) for bb, lib, g in rows]
    lib_r = statistics.median(r[0] for r in per_prompt)
    grpc_r = statistics.median(r[1] for r in per_prompt)
    print("| path | median turn | x bare (median of per-prompt ratios) |")
    print("|---|---|---|")
    print(f"| bare `model.generate` | {b:.0f} ms | 1.00x |")
    print(f"| library `Companion.send` | {lib_ms:.0f} ms | {lib_r:.3f}x |")
    print(f"| gRPC `SendMessage` (client wall time) | {grpc_ms:.0f} ms | {grpc_r:.3f}x |")


if __name__ == "__main__":
    main()
