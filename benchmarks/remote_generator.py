"""One turn through the remote backend (OpenAIChatGenerator) beside the local generator.

Same weights, prompt, decoding and token count on both sides: the embedded SmolLM2 base (the
server has no adapter, so the local side runs without it too), greedy, no repetition penalty
(``transformers serve`` refuses the field), ``--max-new-tokens`` new tokens. Round-robin per
prompt, never both at once:

- ``generator``: the generator's own stream on the system prompt plus the message, timed to
  its first token and to its last;
- ``turn``: ``Pipeline.stream`` (input guard, context, generation, a guard check per released
  unit), timed to its first released ``TextDelta`` and to ``TurnDone``.

Only turns the guard answered and whose remote text equals the local one are compared. Prints
the machine, the load average and the medians with the ratios remote / local.

The server is ``--base-url`` with ``--model`` (any OpenAI-compatible engine serving the same
weights), or, without them, a ``transformers serve`` this script starts on a free loopback
port with the converted embedded model directory, offline, on ``--server-threads`` threads.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/remote_generator.py [--n 12] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from streaming import PROMPTS  # the same prompts as the check-before-release benchmark


@contextlib.contextmanager
def transformers_serve(model_dir: str, threads: int) -> Iterator[str]:
    """``transformers serve`` on ``model_dir``; yields its base URL, stops it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "transformers.cli.transformers", "serve"),
                *("--host", "127.0.0.1", "--port", str(port), "--device", "cpu", model_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            for _ in range(960):
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"transformers serve exited:\n{log.read()[-2000:]!r}")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                time.sleep(0.25)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            proc.wait(20)


def time_generator(gen, messages, config) -> tuple[float, float, str]:
    t0, first, parts = time.perf_counter(), None, []
    for delta in gen.stream(messages, config):
        first = first if first is not None else time.perf_counter() - t0
        parts.append(delta)
    total = time.perf_counter() - t0
    return first if first is not None else total, total, "".join(parts)


def time_turn(companion, text) -> tuple[float, float, object]:
    from companion import TextDelta

    session = companion.start_session(locale="en-US")
    t0, first, done = time.perf_counter(), None, None
    for event in companion.stream(session.id, text):
        if first is None and isinstance(event, TextDelta):
            first = time.perf_counter() - t0
        done = event
    total = time.perf_counter() - t0
    return first if first is not None else total, total, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12, help="prompts to time")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    ap.add_argument("--server-threads", type=int, default=1, help="of the started server")
    ap.add_argument("--base-url", help="an OpenAI-compatible server already running")
    ap.add_argument("--model", help="the model name it serves (with --base-url)")
    args = ap.parse_args()

    import torch

    from companion import Action, Companion, GenerationConfig, PipelineConfig, TurnDone
    from companion.models import (
        HFGenerator,
        OpenAIChatGenerator,
        load_causal_lm,
        load_encoder,
        load_tokenizer,
    )
    from companion.models.lm import resolve_base
    from companion.prompts import SYSTEM_PROMPT
    from companion.safety import SafetyClassifier
    from companion.sessions import InMemorySessionStore

    torch.set_num_threads(args.threads)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=False, repetition_penalty=1.0
    )
    guard = SafetyClassifier.from_defaults(load_encoder(None))
    lm, tok = load_causal_lm(None, adapter=None)
    local = HFGenerator(lm, tok)
    model_dir = resolve_base(None)[0]
    with contextlib.ExitStack() as stack:
        if args.base_url:
            base_url, model = args.base_url, args.model or model_dir
        else:
            base_url = stack.enter_context(transformers_serve(model_dir, args.server_threads))
            model = model_dir
        tokenizer, window = load_tokenizer("embedded")
        remote = OpenAIChatGenerator(base_url, model, tokenizer=tokenizer, context_window=window)
        stack.callback(remote.close)
        pipelines = {
            name: Companion(
                guard, gen, InMemorySessionStore(), config=PipelineConfig(generation=config)
            )
            for name, gen in (("local", local), ("remote", remote))
        }
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()} here,"
            f" {args.server_threads if not args.base_url else '?'} in the server ({base_url});"
            f" {args.max_new_tokens} new tokens, greedy; guard {guard.policy_version}"
        )
        for gen in (local, remote):  # warm-up
            time_generator(gen, [{"role": "user", "content": "Hello"}], config)
        rows: list[tuple[float, ...]] = []
        skipped: list[str] = []
        for text in (PROMPTS * 4)[: args.n]:
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": text},
            ]
            lg_first, lg_total, l_text = time_generator(local, messages, config)
            rg_first, rg_total, r_text = time_generator(remote, messages, config)
            lt_first, lt_total, l_done = time_turn(pipelines["local"], text)
            rt_first, rt_total, r_done = time_turn(pipelines["remote"], text)
            replies = [d.reply for d in (l_done, r_done) if isinstance(d, TurnDone)]
            if len(replies) < 2 or any(r.action is not Action.ANSWERED for r in replies):
                skipped.append(replies[0].action.value if replies else "none")
                continue
            if l_text != r_text or replies[0].text != replies[1].text:
                skipped.append("different text")
                continue
            rows.append(
                (lg_first, rg_first, lg_total, rg_total, lt_first, rt_first, lt_total, rt_total)
            )

    print(f"{len(rows)} answered turns compared; left out: {skipped or 'none'}")
    if not rows:
        return
    med = [statistics.median(col) * 1000 for col in zip(*rows, strict=True)]
    labels = (
        "generator, first token",
        "generator, whole reply",
        "turn, first released text",
        "turn, whole turn",
    )
    print(f"medians ({args.max_new_tokens} new tokens):        local      remote   remote/local")
    for i, label in enumerate(labels):
        lo, re_ = med[2 * i], med[2 * i + 1]
        print(f"  {label:28s} {lo:9.1f} ms {re_:9.1f} ms   {re_ / lo:.2f}x")


if __name__ == "__main__":
    main()
