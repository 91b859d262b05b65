"""Round 33: train M, the cascade's second opinion (classifier card, "Round 33 rule").

M is the embedded SmolLM2-135M-Instruct with LoRA on every projection and a four-way head on
the last token (round 22's recipe, ``probe_post_crisis.LMReader``), reading the cross-encoder's
(conversation, message) pair. It is trained on the hard cases of the train split by the shipped
cross-encoder's crisis score: the ``--positives`` crisis and check-in rows it scores lowest and
the ``--negatives`` none and medical rows it scores highest, the rows nearest the middle band
where the cascade asks M. Writes ``{run_dir}/second/``: the PEFT adapter (LoRA and head), the
chosen rows' ids and ``report.json``; ``calibrate_cross.py --second_reader`` reads it.

Usage:
    python safety/train_second.py --run_dir runs/x12 [--positives 1500] [--negatives 2100]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import banner, parse_args
from probe_post_crisis import train_lm
from train_cross import pairs_of, user_rows

from companion.safety.cross import CLASSES


@dataclass
class Args:
    run_dir: str = field(default="runs/x12", metadata={"help": "folder from prepare.py"})
    artifact: str = field(default="", metadata={"help": "first reader's artifact (''=shipped)"})
    positives: int = field(default=1500, metadata={"help": "crisis/check-in rows, lowest first"})
    negatives: int = field(default=2100, metadata={"help": "none/medical rows, highest first"})
    epochs: int = field(default=2, metadata={"help": "training epochs"})
    seed: int = field(default=13, metadata={"help": "seed"})
    threads: int = field(default=2, metadata={"help": "torch threads"})
    exclude: str = field(default="cssrs", metadata={"help": "sources left out, as train_cross"})


def hard_rows(
    rows: list[dict[str, Any]], crisis: np.ndarray, positives: int, negatives: int
) -> list[int]:
    """Indices of the ``positives`` risk rows with the lowest first-reader crisis score and the
    ``negatives`` other rows with the highest (ties by row order), in row order."""
    risk = np.array([r["label"] in ("crisis", "check_in") for r in rows])
    order = np.argsort(crisis, kind="stable")
    low = [int(i) for i in order if risk[i]][:positives]
    high = [int(i) for i in order[::-1] if not risk[i]][:negatives]
    return sorted(low + high)


def first_crisis(cross: Any, pairs: list[tuple[str, str]], size: int = 64) -> np.ndarray:
    """The first reader's crisis probability of each pair, in length-sorted batches, in bf16
    (used only to rank rows: half the time of fp32)."""
    import torch

    out = np.zeros(len(pairs), dtype=np.float32)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(0, len(order), size):
            idx = order[s : s + size]
            got = cross.probabilities([pairs[i] for i in idx])
            out[idx] = got[:, CLASSES.index("crisis")]
    return out


def main(args: Args) -> None:
    import torch

    from companion.safety import SafetyClassifier

    torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    out = run / "second"
    out.mkdir(parents=True, exist_ok=True)
    train = user_rows(run / "splits" / "train.jsonl", set(args.exclude.split(",")) - {""})
    cross = SafetyClassifier.from_defaults(artifact=args.artifact or None).cross
    if cross is None:
        raise SystemExit("the first reader's artifact has no cross-encoder")
    t0 = time.perf_counter()
    crisis = first_crisis(cross, pairs_of(train, 3))
    banner(f"first reader scored {len(train)} train rows in {time.perf_counter() - t0:.0f} s")
    chosen = hard_rows(train, crisis, args.positives, args.negatives)
    subset = [train[i] for i in chosen]
    counts = {c: sum(r["label"] == c for r in subset) for c in CLASSES}
    lo = float(crisis[chosen].min())
    print(f"  {len(subset)} rows {counts}; first-reader crisis from {lo:.4f}")
    t0 = time.perf_counter()
    reader = train_lm(subset, args.epochs, args.seed)
    seconds = time.perf_counter() - t0
    reader.model.save_pretrained(str(out))
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in subset)
    (out / "rows.jsonl").write_text(lines, "utf-8")
    report = {
        "rows": len(subset),
        "class_counts": counts,
        "epochs": args.epochs,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "positives": args.positives,
        "negatives": args.negatives,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"wrote {out} ({seconds:.0f} s of training)")


if __name__ == "__main__":
    main(parse_args(Args))
