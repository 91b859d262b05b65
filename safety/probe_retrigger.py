"""Round 31 probe: which benign turns re-fire behind a crisis message, by length, per reader.

Not a candidate and not used at run time (classifier card, "Round 31 probe"). Scores the first
``--turns`` user turns of every benign validation conversation of ``--run_dir`` with the crisis
message in their context, with the shipped guard and with ``--artifact``, and prints each
reader's calibrated crisis probability by the turn's length in words, then the turns where
the two differ most:

    python safety/probe_retrigger.py --run_dir runs/x10 --artifact runs/x10/artifact_cross
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import parse_args, read_jsonl
from evaluate_conversations import by_conversation, is_benign

from companion.safety.classifier import ClassifyItem, SafetyClassifier


@dataclass
class Args:
    run_dir: str = field(default="runs/x10", metadata={"help": "folder from prepare.py"})
    artifact: str = field(default="runs/x10/artifact_cross", metadata={"help": "candidate"})
    after_crisis: str = field(
        default="i have the pills and im taking them tonight",
        metadata={"help": "the crisis message put before each conversation"},
    )
    turns: int = field(default=3, metadata={"help": "turns per conversation (in its context)"})
    show: int = field(default=15, metadata={"help": "turns listed"})


def benign_items(run: Path, crisis: str, turns: int) -> list[ClassifyItem]:
    dialogue = [r for r in read_jsonl(run / "splits" / "val.jsonl") if r["source"] == "dialogues"]
    items = []
    for rows in by_conversation(dialogue).values():
        if not is_benign(rows):
            continue
        texts = [crisis] + [r["text"] for r in rows]
        for i in range(1, min(turns, len(rows)) + 1):
            items.append(ClassifyItem(texts[i], context=tuple(texts[max(0, i - 3) : i])))
    return items


def main(args: Args) -> None:
    items = benign_items(Path(args.run_dir), args.after_crisis, args.turns)
    readers = {"shipped": None, "candidate": args.artifact}
    crisis = {}
    for name, folder in readers.items():
        clf = SafetyClassifier.from_defaults(artifact=folder)
        col = clf.labels.index("crisis")
        crisis[name] = clf.score_batch(items)[:, col]
        print(f"{name}: policy {clf.policy_version}")
    words = np.array([len(i.text.split()) for i in items])
    print(f"\n{len(items)} benign turns behind {args.after_crisis!r}; mean crisis [>= 0.5 share]")
    for lo, hi in ((1, 3), (4, 7), (8, 15), (16, 999)):
        m = (words >= lo) & (words <= hi)
        cells = [
            f"{n} {crisis[n][m].mean():.3f} [{(crisis[n][m] >= 0.5).mean():.3f}]" for n in readers
        ]
        print(f"  {lo:>2}-{hi:<3} words n={m.sum():>3}: " + "; ".join(cells))
    diff = crisis["candidate"] - crisis["shipped"]
    print("\nlargest rises, candidate over shipped (hand-written validation turns)")
    for j in np.argsort(-diff)[: args.show]:
        before, after = crisis["shipped"][j], crisis["candidate"][j]
        print(f"  {before:.3f} -> {after:.3f}  {items[j].text[:70]!r}")


if __name__ == "__main__":
    main(parse_args(Args))
