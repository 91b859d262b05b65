"""Which batched generation pays on this CPU: the bare embedded model, no service (issue 15).

For each batch size B of `--sizes`, the same B chat prompts (the embedded SmolLM2-135M, its chat
template, greedy, `--max-new-tokens`) are generated three ways, in this order, in one process:

- ``serial``: one `model.generate` per prompt, one after the other (what the service does today);
- ``static``: one `model.generate` on the B prompts left-padded into one batch;
- ``continuous``: transformers' continuous batching (`model.generate_batch`, paged attention).

Prints reply tokens/s for each and the ratio to ``serial`` at the same B, with the machine, the
load average and the torch threads. Greedy outputs of ``static`` and ``serial`` are compared
token for token (left padding can change a near-tie; the share that match is printed).

Usage:
    python benchmarks/batching.py [--sizes 1,2,4,8] [--max-new-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

PROMPTS = [
    "I finally finished a big project today.",
    "Can you recommend a good book?",
    "How do I get better at chess?",
    "I started learning to bake bread.",
    "What's a nice way to start a journal?",
    "Any tips for a job interview?",
    "How do I keep basil alive on a windowsill?",
    "I'd like some ideas for a rainy Sunday.",
    "My sister is visiting next week and I am excited.",
    "What is a good podcast for a long drive?",
    "Can you help me plan a birthday party?",
    "How can I get better at making small talk?",
    "What is a good stretch to do at my desk?",
    "I want to learn to draw. Where do I start?",
    "What should I pack for a weekend of hiking?",
    "How do I make my small flat feel cosier?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-continuous", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from companion.models.lm import resolve_base

    torch.set_num_threads(args.threads)
    path, _ = resolve_base(None)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
        pad_token_id=pad,
    )  # fmt: skip

    def ids_of(text: str) -> list[int]:
        out = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True
        )
        return list(out if isinstance(out, list) else out["input_ids"])

    def new_tokens(row: list[int]) -> list[int]:
        out = []
        for t in row:
            if t in (pad, tok.eos_token_id):
                break
            out.append(t)
        return out

    model.generate(torch.tensor([ids_of("hello")]), generation_config=config)  # warm-up
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}; "
        f"torch {torch.__version__}, threads {args.threads}; greedy, {args.max_new_tokens} new "
        "tokens; embedded SmolLM2-135M-Instruct"
    )
    print("| B | serial tok/s | static tok/s | x serial | same text | continuous tok/s | x |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(x) for x in args.sizes.split(",")):
        ids = [ids_of(p) for p in (PROMPTS * (size // len(PROMPTS) + 1))[:size]]
        t0 = time.perf_counter()
        serial = []
        with torch.inference_mode():
            for i in ids:
                out = model.generate(torch.tensor([i]), generation_config=config)
                serial.append(new_tokens(out[0, len(i) :].tolist()))
        t_serial = time.perf_counter() - t0
        tok.padding_side = "left"
        batch = tok.pad({"input_ids": ids}, return_tensors="pt")
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=config)
        t_static = time.perf_counter() - t0
        width = batch["input_ids"].shape[1]
        static = [new_tokens(row[width:].tolist()) for row in out]
        n_serial, n_static = sum(map(len, serial)), sum(map(len, static))
        same = sum(a == b for a, b in zip(serial, static, strict=True)) / size
        cont = "-"
        ratio = "-"
        if not args.skip_continuous:
            t0 = time.perf_counter()
            results = model.generate_batch(inputs=ids, generation_config=config)
            t_cont = time.perf_counter() - t0
            n_cont = sum(len(r.generated_tokens) for r in results.values())
            cont = f"{n_cont / t_cont:.1f}"
            ratio = f"{(n_cont / t_cont) / (n_serial / t_serial):.2f}x"
        print(
            f"| {size} | {n_serial / t_serial:.1f} | {n_static / t_static:.1f} | "
            f"{(n_static / t_static) / (n_serial / t_serial):.2f}x | {same:.2f} | {cont} | "
            f"{ratio} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
