"""The labelled conversation files (training `safety/data/dialogues/`, evaluation-only
`safety/data/holdout/`) are well formed, hold what issue 14 asked for, and the held-out set
never reaches training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import safety_script

DATA = Path(__file__).resolve().parents[1] / "safety" / "data"
TRAINING = sorted((DATA / "dialogues").glob("*.jsonl"))
FILES = [*TRAINING, DATA / "holdout" / "conversations.jsonl"]
LABELS = {"none", "check_in", "crisis", "medical"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_conversation_file_is_well_formed(path):
    ids = set()
    for line in path.read_text("utf-8").splitlines():
        conv = json.loads(line)
        assert conv["id"] not in ids, conv["id"]
        ids.add(conv["id"])
        labels = [t["label"] for t in conv["turns"]]
        assert set(labels) <= LABELS, conv["id"]
        assert all(t["text"].strip() for t in conv["turns"]), conv["id"]
        assert 3 <= len(labels) <= 24, conv["id"]
        if conv["kind"] == "benign":
            assert set(labels) == {"none"}, conv["id"]
        else:
            assert conv["kind"] == "risk" and set(labels) != {"none"}, conv["id"]
    assert len(ids) >= 10  # dialogues/m1 has 10


def test_training_conversations_cover_what_issue_14_asked_for():
    """At least 400 benign support-seeking conversations and 150 where risk appears."""
    kinds = [
        json.loads(line)["kind"] for p in TRAINING for line in p.read_text("utf-8").splitlines()
    ]
    assert kinds.count("benign") >= 400 and kinds.count("risk") >= 150, len(kinds)


def test_ids_are_unique_across_training_files_and_the_holdout_is_apart():
    seen: dict[str, str] = {}
    for path in FILES:
        for line in path.read_text("utf-8").splitlines():
            cid = json.loads(line)["id"]
            assert cid not in seen, (cid, path.name, seen.get(cid))
            seen[cid] = path.name
    holdout = {json.loads(line)["id"] for line in FILES[-1].read_text("utf-8").splitlines()}
    prepare = safety_script("prepare")
    rows = prepare.dialogues(DATA, 13, prepare.row, prepare.split_items)
    trained = {r["conversation"] for part in rows.values() for r in part}
    assert trained and not trained & holdout  # prepare.py never reads the held-out set


# b5-038 was written (37e6c8c) before the blind set existed (e4512a7); "on call for the third
# weekend in a row" is an ordinary phrase that both writers reached on their own.
COINCIDENCES = {("b5-038", 0)}


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", "", text.lower()).split())


def test_no_training_turn_copies_a_held_out_sentence():
    """Writers of training data never see the blind set; a sentence of nine words or more
    that matches one of its turns (case and punctuation aside) is taken for a paste, unless
    it is a known coincidence."""
    held_out = {
        _words(t["text"])
        for line in FILES[-1].read_text("utf-8").splitlines()
        for t in json.loads(line)["turns"]
    }
    copies = [
        (json.loads(line)["id"], i)
        for path in TRAINING
        for line in path.read_text("utf-8").splitlines()
        for i, t in enumerate(json.loads(line)["turns"])
        if len(_words(t["text"]).split()) >= 9 and _words(t["text"]) in held_out
    ]
    assert set(copies) <= COINCIDENCES, copies
