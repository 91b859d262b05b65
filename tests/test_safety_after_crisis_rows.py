"""`triage_data.after_crisis` (round 32): benign dialogue turns behind a crisis message."""

from __future__ import annotations

import random

from .conftest import safety_script

td = safety_script("triage_data")


def row(text, label, role, source, **extra):
    return {"text": text, "label": label, "role": role, "source": source, **extra}


def dialogue(cid, turns):
    return [
        row(
            text,
            label,
            "user",
            "dialogues",
            conversation=cid,
            turn=i,
            own_label=all(lab == "none" for _, lab in turns[:i]),
            context=[t for t, _ in turns[:i]],
        )
        for i, (text, label) in enumerate(turns)
    ]


BENIGN = [(f"benign {i}", "none") for i in range(8)]
RISK = [
    ("rough week", "none"),
    ("i have a rope in the garage", "crisis"),
    ("i want to kill myself tonight", "crisis"),
]
HELD_OUT = [("hi", "none"), ("I have the pills, and im taking them tonight!", "crisis")]


def test_every_row_is_a_benign_turn_labelled_none_that_reads_one_crisis_message():
    rows = dialogue("b-1", BENIGN) + dialogue("r-1", RISK) + dialogue("r-2", HELD_OUT)
    for seed in range(20):
        out = td.after_crisis(rows, random.Random(seed), row)
        texts = [r["text"] for r in out]
        first = int(texts[0].split()[1])  # the turn the crisis message was put before
        n = min(td.READ_TURNS, len(BENIGN) - first)
        assert texts == [f"benign {i}" for i in range(first, first + n)]
        for r in out:
            assert (r["label"], r["source"]) == ("none", "after_crisis")
            crisis = [c for c in r["context"] if not c.startswith("benign")]
            # only the first crisis turn of a risk conversation, never a held-out message
            assert crisis == ["i have a rope in the garage"]
            assert r["context"][-td.READ_TURNS :].count(crisis[0]) == 1  # the reader sees it


def test_no_rows_without_a_crisis_message_or_from_a_risk_conversation():
    rng = random.Random(0)
    assert td.after_crisis(dialogue("b-1", BENIGN) + dialogue("r-2", HELD_OUT), rng, row) == []
    assert td.after_crisis(dialogue("r-1", RISK), rng, row) == []
