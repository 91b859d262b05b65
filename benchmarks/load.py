"""Overload: many clients against `companion serve` on the embedded model (issue 16's load test).

Starts `companion serve` in a child process (sessions in memory, torch on one thread, its log
lines to a file), waits for SERVING, then for `--duration` seconds runs `--clients` asyncio
clients on loopback. Each opens a session and sends messages in a loop (SendMessage, deadline
`--deadline`); a RESOURCE_EXHAUSTED waits for its `retry-after-ms` hint (times a random 0.5-1.5)
and goes on. Beside them a probe times a health Check and a CreateSession every
`--probe-interval` seconds. The server's RSS is read from /proc every 5 s. When the time is up
the clients stop sending, the calls in flight finish (each within its deadline), and it prints
the figures: probe latencies, status codes, turn latencies, RSS, and the server's own counts
(rejections by reason from /metrics, RESOURCE_EXHAUSTED `rpc` log lines). It stops by itself.

Usage:
    python benchmarks/load.py [--clients 64] [--duration 60] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

MESSAGES = [
    "I had a long week at work and I'm tired.",
    "My exams are in two weeks and I feel behind.",
    "I argued with my brother about money.",
    "I think I need a holiday.",
    "I finally finished a big project today.",
    "I keep forgetting to drink water during the day.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], metrics_port: int = 0
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`companion serve` in a child process on a free loopback port (sessions in memory, ``env``
    over this process's environment; its log lines to a temporary file): the process, its
    address and the log file. ``metrics_port`` 0: no metrics endpoint."""
    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="companion-bench-")) / "server.log"
    full = {**os.environ, "COMPANION_SESSION_STORE": "memory", **env}
    cmd = [sys.executable, "-m", "companion.cli", "serve", "--port", str(port)]
    cmd += ["--metrics-port", str(metrics_port)]
    with log.open("w") as log_file:
        server = subprocess.Popen(cmd, env=full, stderr=log_file, stdout=subprocess.DEVNULL)
    return server, f"127.0.0.1:{port}", log


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50": round(_pct(ms, 0.5), 2),
        "p99": round(_pct(ms, 0.99), 2),
        "max": round(max(ms, default=float("nan")), 2),
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(args: argparse.Namespace, target: str, pid: int) -> dict[str, object]:
    import grpc
    from grpc import aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from companion._proto.companion.v1 import companion_pb2 as pb
    from companion._proto.companion.v1 import companion_pb2_grpc as pb_grpc

    codes: Counter[str] = Counter()
    probe_codes: Counter[str] = Counter()
    turn_ms: list[float] = []
    health_ms: list[float] = []
    create_ms: list[float] = []
    rss: list[tuple[float, float]] = []
    started = time.monotonic()
    stop = asyncio.Event()

    async def chat(n: int, stub: pb_grpc.CompanionServiceStub) -> None:
        sid = (await stub.CreateSession(pb.CreateSessionRequest(), timeout=30)).session_id
        i = n
        while not stop.is_set():
            text = MESSAGES[i % len(MESSAGES)]
            i += 1
            req = pb.SendMessageRequest(session_id=sid, text=text, request_id=f"load-{n}-{i}")
            t0 = time.perf_counter()
            try:
                await stub.SendMessage(req, timeout=args.deadline)
                codes["OK"] += 1
                turn_ms.append((time.perf_counter() - t0) * 1000)
            except grpc.RpcError as err:
                codes[err.code().name] += 1
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(1.0)
                    continue
                hint = dict(err.trailing_metadata() or ()).get("retry-after-ms", "1000")
                wait = min(int(hint), 10_000) / 1000 * random.uniform(0.5, 1.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)

    async def probe(stub: pb_grpc.CompanionServiceStub, health: health_pb2_grpc.HealthStub) -> None:
        while not stop.is_set():
            for name, call, out in (
                (
                    "health",
                    lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
                    health_ms,
                ),
                (
                    "create",
                    lambda: stub.CreateSession(pb.CreateSessionRequest(), timeout=5),
                    create_ms,
                ),
            ):
                t0 = time.perf_counter()
                try:
                    await call()
                    out.append((time.perf_counter() - t0) * 1000)
                except grpc.RpcError as err:
                    probe_codes[f"{name}:{err.code().name}"] += 1
            await asyncio.sleep(args.probe_interval)

    async def sample_rss() -> None:
        while not stop.is_set():
            rss.append((time.monotonic() - started, _rss_mb(pid)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)

    channels = [aio.insecure_channel(target) for _ in range(args.channels)]
    probe_channel = aio.insecure_channel(target)
    stubs = [pb_grpc.CompanionServiceStub(ch) for ch in channels]
    tasks = [asyncio.create_task(chat(n, stubs[n % len(stubs)])) for n in range(args.clients)]
    helpers = [
        asyncio.create_task(
            probe(
                pb_grpc.CompanionServiceStub(probe_channel),
                health_pb2_grpc.HealthStub(probe_channel),
            )
        ),
        asyncio.create_task(sample_rss()),
    ]
    await asyncio.sleep(args.duration)
    stop.set()
    ended = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*tasks, *helpers), args.deadline + 30)
    rss.append((time.monotonic() - started, _rss_mb(pid)))
    for ch in [*channels, probe_channel]:
        await ch.close()
    baseline_at = min(60.0, args.duration / 2)
    baseline = next((mb for t, mb in rss if t >= baseline_at), rss[-1][1])
    return {
        "clients": args.clients,
        "duration_s": round(ended, 1),
        "drain_s": round(time.monotonic() - started - ended, 1),
        "codes": dict(codes),
        "probe_errors": dict(probe_codes),
        "turns_ok": codes["OK"],
        "turn_ms": _summary(turn_ms),
        "health_ms": _summary(health_ms),
        "create_ms": _summary(create_ms),
        "rss_mb": {
            "baseline_at_s": baseline_at,
            "baseline": round(baseline, 1),
            "end": round(rss[-1][1], 1),
            "max": round(max(mb for _, mb in rss), 1),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--channels", type=int, default=8, help="connections the clients share")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds per SendMessage")
    ap.add_argument("--probe-interval", type=float, default=0.25)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--queue-depth", type=int, default=8)
    args = ap.parse_args()

    metrics_port = _free_port()
    server, target, log = start_server(
        {
            "COMPANION_MAX_NEW_TOKENS": str(args.max_new_tokens),
            "COMPANION_TORCH_THREADS": "1",
            "COMPANION_GENERATION_QUEUE_DEPTH": str(args.queue_depth),
            "OMP_NUM_THREADS": "1",
        },
        metrics_port,
    )
    try:
        from companion.client import CompanionClient

        t0 = time.monotonic()
        with CompanionClient(target) as cl:
            cl.wait_ready(timeout=600)
        print(f"server SERVING after {time.monotonic() - t0:.1f} s; load for {args.duration:g} s",
              file=sys.stderr)  # fmt: skip
        result = asyncio.run(_run(args, target, server.pid))
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        rejected = {
            f"{m[0]}:{m[1]}": float(m[2])
            for m in re.findall(
                r'companion_rejected_rpcs_total\{method="(\w+)",reason="(\w+)"\} (\S+)',
                body.decode(),
            )
        }
    finally:
        server.terminate()
        server.wait(60)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    rpc = [x for x in lines if x.get("event") == "rpc"]
    result["server_rejected_metric"] = rejected
    result["server_rpc_lines_by_code"] = dict(Counter(x["code"] for x in rpc))
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}"
    result["max_new_tokens"], result["queue_depth"] = args.max_new_tokens, args.queue_depth
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
