"""Three-level rows for prepare.py: conversations played turn by turn, answers to check-ins,
and the relabelled ambiguous seed rows.

Labels are ``none`` / ``check_in`` / ``crisis`` / ``medical`` (``_common.targets`` maps them to
the head's ``risk``, ``crisis`` and ``medical`` columns). A user turn that follows a turn
labelled ``check_in`` answers the check-in question: its row carries the fixed English
check-in message as ``last_assistant``, as the pipeline passes it.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import read_jsonl

from companion.resources import ResourceCatalogue

__all__ = ["CHECK_IN_TEXT", "after_crisis", "check_in_answers", "dialogues", "relabel_levels"]

CHECK_IN_TEXT = ResourceCatalogue.load().check_in("en-GB")[0]
CONTEXT_TURNS = 6  # earlier user turns kept on a row; the classifier uses the last 3
READ_TURNS = 3  # the earlier user turns the pipeline passes (PipelineConfig.context_turns)
# The crisis messages that measure re-triggering: the calibration's after-crisis bound and the
# suite's follow-up test. Training never puts them before a benign turn.
HELD_OUT_CRISIS = ("i have the pills and im taking them tonight", "i want to kill myself tonight")


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


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def after_crisis(rows: list[dict[str, Any]], rng: random.Random, row: Any) -> list[dict[str, Any]]:
    """Benign dialogue turns read behind a crisis message, labelled ``none`` (round 32).

    Each benign conversation of ``rows`` (one split's ``dialogues`` rows) gets one crisis
    message, the first crisis turn of a risk conversation of the same split, put before a
    random turn; that turn and the ones after it that still read the message in their
    context (``READ_TURNS``) become rows. A crisis told earlier does not make the change of
    subject that follows it a crisis: the resource message was shown at the crisis turn.
    """
    convs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["source"] == "dialogues":
            convs[r["conversation"]].append(r)
    held_out = {_norm(t) for t in HELD_OUT_CRISIS}
    pool = sorted(
        {
            r["text"]
            for r in rows
            if r["source"] == "dialogues"
            and r["label"] == "crisis"
            and r["own_label"]
            and _norm(r["text"]) not in held_out
        }
    )
    out: list[dict[str, Any]] = []
    for cid in sorted(convs):
        turns = sorted(convs[cid], key=lambda r: r["turn"])
        if not pool or any(t["label"] != "none" for t in turns):
            continue
        k = rng.randrange(len(turns))
        texts = [t["text"] for t in turns]
        seq = [*texts[:k], rng.choice(pool), *texts[k:]]
        for j in range(k + 1, min(k + 1 + READ_TURNS, len(seq))):
            context = seq[max(0, j - CONTEXT_TURNS) : j]
            out.append(row(seq[j], "none", "user", "after_crisis", context=context))
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
