"""Turn-pair append latency: the Redis session store beside the SQLite store, in one run.

Starts a throwaway ``redis-server`` on a free loopback port (no persistence: ``--save ''
--appendonly no``, as the tests run it) unless ``--redis-url`` names one, and a SQLite store
(WAL, ``synchronous=NORMAL``) in a temporary directory. Each round appends one user/assistant
pair to a session of each store, alternating which goes first, so both see the same machine
load. Prints p50/p99 per store and the ratios Redis / SQLite. The ``redis+lock`` row is what a
turn on Redis does around its append: take the session's turn lock, append under it, release
it (three round trips, against one).

Usage:
    python benchmarks/session_append.py [--n 2000] [--sessions 20] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from companion import Action, Category, Role, SessionInfo, Turn
from companion.protocols import SessionStore
from companion.sessions import RedisSessionStore, SQLiteSessionStore, new_session_id

USER = "I had a long week at work and I'm tired, and I keep thinking about the deadline."
REPLY = "That sounds exhausting. What has been weighing on you most about the deadline?"


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("redis-server did not start")


def pair() -> list[Turn]:
    now = time.time()
    scores = {"crisis": 0.012, "medical": 0.004}
    return [
        Turn(Role.USER, USER, now, Category.NONE, Action.ANSWERED, scores),
        Turn(Role.ASSISTANT, REPLY, now, Category.NONE, Action.ANSWERED, scores),
    ]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="pairs appended to each store")
    ap.add_argument("--sessions", type=int, default=20, help="sessions the pairs spread over")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--redis-url", default=None, help="an existing Redis (default: start one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        url = args.redis_url
        if url is None:
            proc, url = start_redis(Path(tmp))
        try:
            stores: dict[str, SessionStore] = {
                "sqlite": SQLiteSessionStore(Path(tmp) / "bench.sqlite3"),
                "redis": RedisSessionStore(url),
            }
            sids = [new_session_id() for _ in range(args.sessions)]
            for store in stores.values():
                for sid in sids:
                    store.create(SessionInfo(sid, "en-US", time.time()))
            redis_store = stores["redis"]
            assert isinstance(redis_store, RedisSessionStore)

            def locked_append(sid: str) -> None:
                lock = redis_store.lock_turn(sid, lambda: False)
                redis_store.append(sid, pair(), lock=lock)
                lock.release()

            ops: dict[str, Callable[[str], object]] = {
                "sqlite": lambda sid: stores["sqlite"].append(sid, pair()),
                "redis": lambda sid: redis_store.append(sid, pair()),
                "redis+lock": locked_append,
            }
            times: dict[str, list[float]] = {name: [] for name in ops}
            order = list(ops)
            for i in range(args.warmup + args.n):
                sid = sids[i % len(sids)]
                for name in order if i % 2 else order[::-1]:
                    t0 = time.perf_counter()
                    ops[name](sid)
                    elapsed = (time.perf_counter() - t0) * 1000
                    if i >= args.warmup:
                        times[name].append(elapsed)
            for store in stores.values():
                store.close()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; {args.n} pairs per store over {args.sessions} sessions"
        f" (~{(args.warmup + args.n) * 2 // args.sessions} turns each at the end; the Redis"
        " sessions twice that, as both Redis rows write to them)"
    )
    print(f"{'store':10} {'p50 ms':>8} {'p99 ms':>8}")
    stats = {name: (pct(v, 50), pct(v, 99)) for name, v in times.items()}
    for name, (p50, p99) in stats.items():
        print(f"{name:10} {p50:8.3f} {p99:8.3f}")
    (r50, r99), (s50, s99) = stats["redis"], stats["sqlite"]
    print(f"redis / sqlite: p50 {r50 / s50:.2f}x, p99 {r99 / s99:.2f}x")


if __name__ == "__main__":
    main()
