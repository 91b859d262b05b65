"""The reply check on real model output: sampled replies (``sample_replies.py``), labelled.

Reads JSON lines with ``kind``, ``reply`` and ``label`` (none / check_in / crisis / medical),
runs the output guard on each reply as the pipeline does (role assistant) and prints, per
kind: how many replies carry each label, the share withheld among the risky ones (any label
but none) and among the ``none`` ones, and how many the risk-topic rule alone withheld.
Not read by ``prepare.py``: the file is a measurement, not training data.

Usage:
    python safety/evaluate_replies.py [--data safety/data/model_replies_r8.jsonl] [--artifact DIR]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from _common import REPO_ROOT, banner, parse_args, read_jsonl

from companion.safety import ClassifyItem, SafetyClassifier
from companion.types import Role


@dataclass
class Args:
    data: str = field(
        default=str(REPO_ROOT / "safety" / "data" / "model_replies_r8.jsonl"),
        metadata={"help": "labelled sampled replies"},
    )
    artifact: str = field(default="", metadata={"help": "artifact folder ('' = shipped)"})


def main(args: Args) -> None:
    rows = read_jsonl(args.data)
    clf = SafetyClassifier.from_defaults(artifact=args.artifact or None)
    verdicts = clf.classify_batch([ClassifyItem(r["reply"], Role.ASSISTANT) for r in rows])
    banner(f"policy {clf.policy_version}: {len(rows)} sampled replies")
    for kind in sorted({r["kind"] for r in rows}):
        part = [(r, v) for r, v in zip(rows, verdicts, strict=True) if r["kind"] == kind]
        labels = Counter(r["label"] for r, _ in part)
        risky = [(r, v) for r, v in part if r["label"] != "none"]
        benign = [(r, v) for r, v in part if r["label"] == "none"]
        topic = sum(v.scores.get("risk_topic", 0.0) >= 1.0 for _, v in risky)
        print(f"  {kind}: labels {dict(sorted(labels.items()))}")
        if risky:
            held = sum(v.fired for _, v in risky)
            print(
                f"    risky replies withheld: {held}/{len(risky)} = {held / len(risky):.3f}"
                f" (risk-topic rule alone: {topic})"
            )
        if benign:
            held = sum(v.fired for _, v in benign)
            print(f"    ordinary replies withheld: {held}/{len(benign)} = {held / len(benign):.3f}")


if __name__ == "__main__":
    main(parse_args(Args))
