"""The labelled conversation files (training `safety/data/dialogues/`, evaluation-only
`safety/data/holdout/`) are well formed, and the held-out set never reaches training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import safety_script

DATA = Path(__file__).resolve().parents[1] / "safety" / "data"
FILES = [*sorted((DATA / "dialogues").glob("*.jsonl")), DATA / "holdout" / "conversations.jsonl"]
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
    assert len(ids) >= 50


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
