"""Does the guard keep its verdicts on another encoder runtime? Torch beside ONNX Runtime.

Classifies every row of a split (user rows with their context and check-in state, model replies)
with the artifact on the torch encoder and on ``--runtime`` (``onnx`` or ``onnx-int8``), and
reports the share of rows whose decision (none / check-in / redirect) and category are the
same, per role, with the rows that changed counted by direction. Issue 15 keeps a runtime when
it agrees on at least 0.995 of validation. Also prints the median time per row of each runtime
(one row per call, as the pipeline checks).

Usage:
    python safety/runtime_agreement.py --run_dir runs/x4 [--split val] [--runtime onnx-int8]
        [--artifact DIR] [--threads 1]
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _common import DEFAULT_RUN_DIR, banner, parse_args, read_jsonl

from companion.safety import ClassifyItem, SafetyClassifier
from companion.types import Role


@dataclass
class Args:
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "folder from prepare.py"})
    split: str = field(default="val", metadata={"help": "val or test"})
    runtime: str = field(default="onnx-int8", metadata={"help": "onnx or onnx-int8"})
    artifact: str = field(default="", metadata={"help": "artifact folder ('': the shipped one)"})
    threads: int = field(default=1, metadata={"help": "torch / ONNX Runtime threads"})
    limit: int = field(default=0, metadata={"help": "first N rows only (0: all)"})


def main(args: Args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = read_jsonl(Path(args.run_dir) / "splits" / f"{args.split}.jsonl")
    if args.limit:
        rows = rows[: args.limit]
    items = [
        ClassifyItem(
            r["text"], Role(r["role"]), tuple(r.get("context", ())), r.get("last_assistant", "")
        )
        for r in rows
    ]
    artifact = args.artifact or None
    verdicts, times = {}, {}
    for runtime in ("torch", args.runtime):
        clf = SafetyClassifier.from_defaults(artifact=artifact, runtime=runtime)
        banner(f"{runtime}: {clf.encoder.name}, policy {clf.policy_version}, {len(rows)} rows")
        out, ms = [], []
        for item in items:
            t0 = time.perf_counter()
            out.append(clf.classify_batch([item])[0])
            ms.append((time.perf_counter() - t0) * 1000)
        verdicts[runtime], times[runtime] = out, ms
    report: dict[str, object] = {"split": args.split, "runtime": args.runtime, "rows": len(rows)}
    banner(f"agreement, torch -> {args.runtime}")
    for role in ("user", "assistant"):
        idx = [k for k, r in enumerate(rows) if r["role"] == role]
        if not idx:
            continue
        same = sum(
            verdicts["torch"][k].decision is verdicts[args.runtime][k].decision
            and verdicts["torch"][k].category is verdicts[args.runtime][k].category
            for k in idx
        )
        moved = Counter(
            f"{verdicts['torch'][k].decision.value}->{verdicts[args.runtime][k].decision.value}"
            for k in idx
            if verdicts["torch"][k].decision is not verdicts[args.runtime][k].decision
        )
        share = same / len(idx)
        report[role] = {"n": len(idx), "agreement": round(share, 4), "changed": dict(moved)}
        print(f"  {role:9s} n={len(idx):5d}  same verdict {share:.4f}  changed {dict(moved)}")
    for runtime, ms in times.items():
        report[f"median_ms_{runtime}"] = round(statistics.median(ms), 2)
        print(f"  median per row, {runtime:9s} {statistics.median(ms):6.2f} ms")
    out_path = Path(args.run_dir) / f"runtime_agreement_{args.split}_{args.runtime}.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main(parse_args(Args))
