"""SQLite append latency with ``synchronous=NORMAL`` and ``FULL`` (the store's setting).

Each round appends one turn pair (a 400-character message and reply) to one session, timed
round-robin in both modes on the same file system, and prints median and p99 per mode. With
WAL, NORMAL fsyncs only at checkpoints; FULL fsyncs the WAL at every commit, so the difference
is the price of an acknowledged turn surviving a power loss.

Usage:
    python benchmarks/sqlite_append.py [--n 300] [--dir DIR]   # DIR on the disk to measure
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from companion import Action, Category, Role, SessionInfo, Turn
from companion.sessions import SQLiteSessionStore, new_session_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--dir", default=None, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        stores, sids = {}, {}
        for mode in ("NORMAL", "FULL"):
            store = SQLiteSessionStore(Path(tmp) / f"{mode}.sqlite3")
            store._db.execute(f"PRAGMA synchronous={mode}")  # the benchmark overrides FULL
            sids[mode] = new_session_id()
            store.create(SessionInfo(sids[mode], "en-US", time.time()))
            stores[mode] = store
        times: dict[str, list[float]] = {mode: [] for mode in stores}
        text = "word " * 80
        for _ in range(args.n):
            for mode, store in stores.items():
                now = time.time()
                turns = [
                    Turn(Role.USER, text, now, Category.NONE, Action.ANSWERED, {}),
                    Turn(Role.ASSISTANT, text, now, Category.NONE, Action.ANSWERED, {}),
                ]
                started = time.perf_counter()
                store.append(sids[mode], turns)
                times[mode].append((time.perf_counter() - started) * 1000)
        print(f"{args.n} appends of one turn pair per mode, in {tmp}")
        for mode, ms in times.items():
            p99 = statistics.quantiles(ms, n=100)[98]
            print(f"synchronous={mode:6}  median {statistics.median(ms):.3f} ms  p99 {p99:.3f} ms")
        for store in stores.values():
            store.close()


if __name__ == "__main__":
    main()
