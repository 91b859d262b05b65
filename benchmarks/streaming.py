"""Check-before-release streaming: time to first released text, beside the bare model.

For each prompt, in the same process and run, round-robin:
- ``bare``: the embedded generator's own stream on the same messages, timed to the end of its
  first release unit (a sentence, a long clause, or 240 characters: ``companion._release``),
  and to its last token;
- ``pipeline``: ``Pipeline.stream`` (input guard, context, generation, a guard check per unit),
  timed to its first ``TextDelta`` and to ``TurnDone``.

Greedy decoding, so both produce the same text. Prints the machine, load average, torch
threads and the medians, and the ratios pipeline / bare (issue 15's targets: first released
text within 1.3x the bare model's first sentence; everything but generation <= 5% of a turn).

Usage:
    python benchmarks/streaming.py [--n 12] [--max-new-tokens 96] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

PROMPTS = [
    "I had a long week at work and I'm tired.",
    "Can you suggest a way to relax before bed?",
    "My sister is visiting next week and I'm excited.",
    "I think I need a holiday.",
    "How do I stop procrastinating on my essay?",
    "I started running again and my legs hurt.",
    "What's a good way to make friends in a new city?",
    "I keep forgetting to drink water during the day.",
    "My exams are in two weeks and I feel behind.",
    "I argued with my brother about money.",
    "What should I cook for a quiet evening in?",
    "I finally finished a big project today.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12, help="prompts to time")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()

    import torch

    from companion import Action, Companion, GenerationConfig, PipelineConfig, TextDelta, TurnDone
    from companion._release import ReleaseBuffer
    from companion.prompts import SYSTEM_PROMPT
    from companion.sessions import new_session_id
    from companion.types import SessionInfo

    torch.set_num_threads(args.threads)
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
    c = Companion.from_defaults("memory", config=PipelineConfig(generation=gen_cfg))
    p = c.pipeline
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}; "
        f"max_new_tokens {args.max_new_tokens}, greedy; guard {p.guard.policy_version}"
    )
    p.turn(c.start_session().id, "Hello")  # warm-up
    rows: list[tuple[float, float, float, float]] = []
    skipped: list[str] = []
    for text in (PROMPTS * 4)[: args.n]:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ]
        t0, first, buf, parts = time.perf_counter(), None, ReleaseBuffer(), []
        for delta in p.generator.stream(messages, gen_cfg):
            parts.append(delta)
            if first is None and buf.add(delta):
                first = time.perf_counter() - t0
        bare_total = time.perf_counter() - t0
        bare_first = first if first is not None else bare_total

        sid = new_session_id()
        p.store.create(SessionInfo(sid, "en-US", time.time()))
        t0, first, done = time.perf_counter(), None, None
        for event in p.stream(sid, text):
            if first is None and isinstance(event, TextDelta):
                first = time.perf_counter() - t0
            done = event
        total = time.perf_counter() - t0
        reply = done.reply if isinstance(done, TurnDone) else None
        if reply is None or reply.action is not Action.ANSWERED or first is None:
            skipped.append(reply.action.value if reply is not None else "none")
            continue  # redirected, checked in or withheld: not the same work as the bare model
        if reply.text != "".join(parts).strip():
            skipped.append("different text")
            continue
        rows.append((bare_first, first, bare_total, total))

    print(f"{len(rows)} answered turns compared; left out: {skipped or 'none'}")
    if not rows:
        return
    med = [statistics.median(col) * 1000 for col in zip(*rows, strict=True)]
    print("medians:")
    print(f"  bare model, first unit      {med[0]:8.1f} ms")
    print(f"  pipeline, first released    {med[1]:8.1f} ms   ratio {med[1] / med[0]:.2f}x")
    print(f"  bare model, whole reply     {med[2]:8.1f} ms")
    print(f"  pipeline, whole turn        {med[3]:8.1f} ms   ratio {med[3] / med[2]:.2f}x")
    c.close()


if __name__ == "__main__":
    main()
