"""A blind side-by-side of two models' replies, rated against ``training/STYLE_GUIDE.md``.

``make`` takes ``evaluate.py``'s ``replies.jsonl`` and writes ``items.jsonl`` (the first
``--n`` held-out conversations, fixed prompts excluded, each with replies A and B in a seeded
random order) and, separately, ``key.json`` (which model is A). The rater sees only the items
and the style guide and writes ``ratings.jsonl``: ``{"id", "preferred": "A" | "B" | "tie",
"reason"}`` per item. ``score`` unblinds: the share of items where each model is preferred,
ties counted half, with a bootstrap interval.

    python training/side_by_side.py make runs/eval/replies.jsonl training/eval/sxs \\
        --a previous --b tuned --n 40
    python training/side_by_side.py score training/eval/sxs
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def make(replies: Path, out: Path, a: str, b: str, n: int, seed: int) -> None:
    rows = [json.loads(line) for line in replies.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("source") != "fixed"][:n]
    if len(rows) < n:
        sys.exit(f"only {len(rows)} held-out conversations in {replies}, wanted {n}")
    rng = random.Random(seed)
    items, key = [], {}
    for i, row in enumerate(rows):
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        item_id = f"sxs-{i + 1:03d}"
        key[item_id] = {"A": first, "B": second}
        items.append(
            {
                "id": item_id,
                "conversation": row["conversation"],
                "A": row[first]["text"],
                "B": row[second]["text"],
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "items.jsonl").open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    (out / "key.json").write_text(json.dumps(key, indent=1) + "\n")
    print(f"wrote {len(items)} items to {out}/items.jsonl and the key to {out}/key.json")


def preference(ratings: list[str], model: str) -> float:
    """Share of ratings won by ``model`` (each rating the winner's name or "tie")."""
    return sum(1.0 if r == model else 0.5 if r == "tie" else 0.0 for r in ratings) / len(ratings)


def score(folder: Path, seed: int) -> dict:
    key = json.loads((folder / "key.json").read_text())
    lines = (folder / "ratings.jsonl").read_text(encoding="utf-8").splitlines()
    ratings = [json.loads(line) for line in lines if line.strip()]
    if {r["id"] for r in ratings} != set(key):
        sys.exit("ratings.jsonl does not rate every item exactly once")
    winners = ["tie" if r["preferred"] == "tie" else key[r["id"]][r["preferred"]] for r in ratings]
    models = sorted({m for pair in key.values() for m in pair.values()})
    rng = random.Random(seed)
    result: dict = {"items": len(ratings), "ties": winners.count("tie")}
    for model in models:
        boots = sorted(
            preference([rng.choice(winners) for _ in winners], model) for _ in range(2000)
        )
        result[model] = {
            "preferred": round(preference(winners, model), 3),
            "ci95": [round(boots[50], 3), round(boots[1949], 3)],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="blind items and a separate key from replies.jsonl")
    m.add_argument("replies", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--a", default="previous")
    m.add_argument("--b", default="tuned")
    m.add_argument("--n", type=int, default=40)
    m.add_argument("--seed", type=int, default=13)
    s = sub.add_parser("score", help="unblind ratings.jsonl with key.json")
    s.add_argument("folder", type=Path)
    s.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    if args.command == "make":
        make(args.replies, args.out, args.a, args.b, args.n, args.seed)
    else:
        print(json.dumps(score(args.folder, args.seed), indent=2))


if __name__ == "__main__":
    main()
