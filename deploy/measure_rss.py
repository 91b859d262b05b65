#!/usr/bin/env python3
"""Measure the memory of one real ``companion serve`` process: idle at SERVING, then after turns.

The Kubernetes memory request and limit in ``deploy/k8s/deployment.yaml`` come from this
script's numbers (``deploy/README.md`` lists them). It starts ``companion serve`` (the one on
PATH, or ``--companion``) on free loopback ports with the caller's environment, so the same
``COMPANION_*`` variables as in a pod apply (``COMPANION_SESSION_STORE=redis``,
``COMPANION_REDIS_URL``, ``COMPANION_TORCH_THREADS``...), waits for health SERVING, reads
``/proc/PID/status`` (Linux only), sends a few turns through :class:`CompanionClient` (both
``send`` and ``stream``) and prints one JSON object:

    python deploy/measure_rss.py --turns 6 > rss.json

Sizes are MiB; ``hwm`` is the peak resident size so far (the model load included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from companion.client import CompanionClient, TurnDone

MESSAGES = (
    "I feel anxious about my exams next week",
    "I keep thinking I will fail and let everyone down",
    "My sister says I should just relax but it is not that easy",
    "I have not been sleeping well since the term started",
    "Thank you, it helps to write it down",
    "Can you help me think about what to do tonight?",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of ``pid`` in MiB."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "hwm"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key]] = round(int(value.split()[0]) / 1024, 1)  # kB -> MiB
    return out


def main() -> int:
    """Run the measurement and print it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=len(MESSAGES), help="turns to send")
    parser.add_argument("--companion", default=shutil.which("companion") or "companion")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args()

    port, metrics_port = _free_port(), _free_port()
    cmd = [args.companion, "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--metrics-port", str(metrics_port), "--log-level", "warning"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result: dict[str, Any] = {
        "torch_threads": os.environ.get("COMPANION_TORCH_THREADS", "default"),
        "session_store": os.environ.get("COMPANION_SESSION_STORE", "sqlite"),
    }
    try:
        with CompanionClient(
            f"127.0.0.1:{port}", api_key=os.environ.get("COMPANION_API_KEY")
        ) as cl:
            cl.wait_ready(timeout=args.ready_timeout)
            result["ready_s"] = round(time.perf_counter() - started, 1)
            time.sleep(2.0)
            result["idle"] = memory(proc.pid)
            sid = cl.create_session(locale="en-GB")
            turns = []
            for i in range(args.turns):
                text = MESSAGES[i % len(MESSAGES)]
                t0 = time.perf_counter()
                if i % 2:
                    reply = next(e.reply for e in cl.stream(sid, text) if isinstance(e, TurnDone))
                else:
                    reply = cl.send(sid, text)
                turns.append(
                    {
                        "action": str(reply.action.value),
                        "seconds": round(time.perf_counter() - t0, 1),
                        "reply_chars": len(reply.text),
                    }
                )
            result["turns"] = turns
            result["after_turns"] = memory(proc.pid)
            cl.delete_session(sid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    result["exit_code"] = proc.returncode
    if proc.returncode not in (0, -signal.SIGTERM):
        print(err[-4000:], file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
