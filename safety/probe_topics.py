"""Round 32 probe: which benign turns the guard interrupts, by conversation topic and by words.

Not a candidate and not used at run time (classifier card, "Round 32 probe"). Plays every
benign conversation of ``--run_dir``'s ``--split`` through the shipped guard, as
``evaluate_conversations.py`` does (check-in state included), and prints the share of turns
interrupted per conversation topic and per word group (sleep and tiredness, loss, neither),
how the cascade's two readers split the decision on those turns (the cross-encoder's crisis
score against ``t_ask`` and ``sure``, and how often the head, asked in between, vetoes), then
some interrupted turns of each group:

    python safety/probe_topics.py --run_dir runs/x11
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from _common import parse_args, read_jsonl
from evaluate_conversations import Args as ReplayArgs
from evaluate_conversations import by_conversation, is_benign, play

from companion.safety.classifier import ClassifyItem, SafetyClassifier
from companion.types import Decision

GROUPS = {
    "sleep/tired": re.compile(
        r"sleep|insomnia|awake|\bnight|tired|exhaust|knackered|wind(ing)? down|\b[1-5] ?am\b", re.I
    ),
    "loss": re.compile(
        r"funeral|\bdied|\bdeath|passed away|grie[fv]|\bloss\b|\blost (my|her|him)", re.I
    ),
}


@dataclass
class Args:
    run_dir: str = field(default="runs/x11", metadata={"help": "folder from prepare.py"})
    split: str = field(default="val", metadata={"help": "split replayed"})
    show: int = field(default=8, metadata={"help": "interrupted turns listed per group"})


def group_of(text: str) -> str:
    return next((name for name, rx in GROUPS.items() if rx.search(text)), "neither")


def readers(clf: SafetyClassifier, items: list[ClassifyItem]) -> None:
    """How the cascade's readers split the benign turns (no check-in state: scores only)."""
    rule, ask = clf.policy.second_opinion, clf.policy.thresholds["user"]["crisis"]
    if not rule:
        return
    scores = clf.score_batch(items)
    crisis = scores[:, clf.labels.index("crisis")]
    head = clf._second_opinions(scores, items)  # the head's crisis score where it is asked
    agree = sum(h >= rule["head"] for h in head.values())
    n = len(items)
    print(f"\ncascade on {n} benign turns: t_ask {ask}, sure {rule['sure']}, head {rule['head']}")
    print(
        f"  cross-encoder crisis >= sure (redirected alone): {(crisis >= rule['sure']).mean():.3f}"
    )
    print(f"  in between (head asked): {len(head) / n:.3f}; head agrees on {agree} of {len(head)}")
    print(f"  under t_ask: {(crisis < ask).mean():.3f}")


def main(args: Args) -> None:
    rows = read_jsonl(Path(args.run_dir) / "splits" / f"{args.split}.jsonl")
    convs = by_conversation([r for r in rows if r["source"] == "dialogues"])
    clf = SafetyClassifier.from_defaults()
    replay = ReplayArgs()
    by_topic: dict[str, list[float]] = defaultdict(list)
    by_group: dict[str, list[float]] = defaultdict(list)
    shown: dict[str, list[str]] = defaultdict(list)
    items: list[ClassifyItem] = []  # the same turns, for the readers' split
    for turns in convs.values():
        if not is_benign(turns):
            continue
        topic = turns[0]["subtype"].split("/", 1)[1]
        for t, d in zip(turns, play(clf, turns, replay), strict=True):
            hit = float(d is not Decision.NONE)
            group = group_of(t["text"])
            by_topic[topic].append(hit)
            by_group[group].append(hit)
            if hit:
                shown[group].append(t["text"])
            context = tuple(t["context"][-replay.context_turns :])
            items.append(ClassifyItem(t["text"], context=context))
    total = sum(sum(v) for v in by_group.values())
    print(f"policy {clf.policy_version}; {args.split}; {int(total)} benign turns interrupted")
    print("\nby word group: turns, share interrupted, share of all interruptions")
    for name in (*GROUPS, "neither"):
        v = by_group[name]
        print(f"  {name:12s} n={len(v):5d}  {sum(v) / max(len(v), 1):.3f}  {sum(v) / total:.3f}")
    print("\nby conversation topic (most interrupted first): turns, share interrupted")
    for topic, v in sorted(by_topic.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        print(f"  {topic[:30]:30s} n={len(v):4d}  {sum(v) / len(v):.3f}")
    readers(clf, items)
    for name in (*GROUPS, "neither"):
        print(f"\ninterrupted, {name}:")
        for text in shown[name][: args.show]:
            print(f"  {text[:90]!r}")


if __name__ == "__main__":
    main(parse_args(Args))
