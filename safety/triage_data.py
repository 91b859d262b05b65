"""Three-level rows for prepare.py: conversations played turn by turn, answers to check-ins,
and the relabelled ambiguous seed rows.

Labels are ``none`` / ``check_in`` / ``crisis`` / ``medical`` (``_common.targets`` maps them to
the head's ``risk``, ``crisis`` and ``medical`` columns). A user turn that follows a turn
labelled ``check_in`` answers the check-in question: its row carries the fixed English
check-in message as ``last_assistant``, as the pipeline passes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import read_jsonl

from companion.resources import ResourceCatalogue

__all__ = ["CHECK_IN_TEXT", "check_in_answers", "dialogues", "relabel_levels"]

CHECK_IN_TEXT = ResourceCatalogue.load().check_in("en-GB")[0]
CONTEXT_TURNS = 6  # earlier user turns kept on a row; the classifier uses the last 3


def dialogues(seed_dir: Path, seed: int, row: Any, split: Any) -> dict[str, list[dict[str, Any]]]:
    """Every user turn of ``dialogues/*.jsonl`` as a row with the turns before it, split by
    conversation (``split``: prepare's 60/20/20, per file and kind); ``row`` builds a row."""
    convs = []
    for path in sorted((seed_dir / "dialogues").glob("*.jsonl")):
        convs += [{**c, "_file": path.stem} for c in read_jsonl(path)]
    out: dict[str, list[dict[str, Any]]] = {}
    for name, part in split(convs, seed, key=lambda c: c["_file"] + c["kind"]).items():
        rows = []
        for c in part:
            turns = c["turns"]
            for i, t in enumerate(turns):
                answers = i > 0 and turns[i - 1]["label"] == "check_in"
                rows.append(
                    row(
                        t["text"],
                        t["label"],
                        "user",
                        "dialogues",
                        context=[p["text"] for p in turns[max(0, i - CONTEXT_TURNS) : i]],
                        last_assistant=CHECK_IN_TEXT if answers else "",
                        subtype=f"{c['kind']}/{c.get('pattern') or c.get('topic', '')}",
                        conversation=c["id"],
                        turn=i,
                        # up to the first risk turn, a label is a property of the text itself
                        own_label=all(p["label"] == "none" for p in turns[:i]),
                    )
                )
        out[name] = rows
    return out


def check_in_answers(
    seed_dir: Path, seed: int, row: Any, split: Any
) -> dict[str, list[dict[str, Any]]]:
    """Answers to the check-in question (``check_in_answers.jsonl``), split per label."""
    path = seed_dir / "check_in_answers.jsonl"
    items = read_jsonl(path) if path.exists() else []
    return {
        name: [
            row(
                r["text"],
                r["label"],
                "user",
                "check_in_answers",
                context=r["context"],
                last_assistant=CHECK_IN_TEXT,
                subtype=f"answer_{r['label']}",
            )
            for r in part
        ]
        for name, part in split(items, seed, key=lambda r: r["label"]).items()
    }


def relabel_levels(seed_dir: Path) -> dict[str, str]:
    """Text -> level for the crisis seed rows relabelled into three levels."""
    path = seed_dir / "relabel_levels.jsonl"
    return {r["text"]: r["level"] for r in read_jsonl(path)} if path.exists() else {}
