"""Seed-set splits are stable: adding rows in a new subtype, or conversations in a new batch,
leaves every earlier row in the split it had, so a new artifact can be compared with an old one
on the same held-out rows (safety/CLASSIFIER_CARD.md relies on this)."""

from __future__ import annotations

import random

import pytest

from .conftest import SHARED_DATA as DATA
from .conftest import safety_script


@pytest.fixture(scope="module")
def prepare():
    return safety_script("prepare")


def _where(splits: dict[str, list[dict]]) -> dict[str, str]:
    return {item["text"]: name for name, items in splits.items() for item in items}


def test_a_new_subtype_leaves_earlier_rows_in_their_split(prepare):
    old = [{"text": f"{k}-{i}", "subtype": k} for k in ("a", "b") for i in range(20)]
    new = [{"text": f"c-{i}", "subtype": "c"} for i in range(20)]
    before = _where(prepare.split_items(old, 13, key=lambda r: r["subtype"]))
    after = _where(prepare.split_items(old + new, 13, key=lambda r: r["subtype"]))
    assert {t: after[t] for t in before} == before
    assert sorted(before.values()).count("test") == 8  # 20 / 20 / 60 per subtype


def test_a_new_conversation_batch_leaves_earlier_conversations_in_their_split(prepare):
    old = [{"text": f"{k}-{i}", "kind": k} for k in ("escalating", "recovered") for i in range(10)]
    batch = [{"text": f"new-{i}", "kind": "escalating", "set": "2"} for i in range(10)]
    before = _where(prepare.conversation_splits(old, 13))
    after = _where(prepare.conversation_splits(old + batch, 13))
    assert {t: after[t] for t in before} == before
    # the same rows added to the old stratum instead would have reshuffled it
    mixed = _where(prepare.conversation_splits(old + [dict(b, set="") for b in batch], 13))
    assert {t: mixed[t] for t in before} != before


@pytest.mark.skipif(not (DATA / "AnnoMI").is_dir(), reason="shared data not at ../shared/data")
def test_annomi_turns_split_by_transcript_and_risky_turns_left_out(prepare):
    args = prepare.Args(data_dir=str(DATA), annomi_max=100_000)
    parts = prepare.annomi(DATA, args, random.Random(0))
    groups = {name: {r["group"] for r in rows} for name, rows in parts.items()}
    assert all(groups.values())
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"])
    assert not groups["val"] & groups["test"]
    rows = [r for rows in parts.values() for r in rows]
    assert {(r["label"], r["role"], r["source"]) for r in rows} == {("none", "user", "annomi")}
    for r in rows:
        assert len(r["text"].split()) >= 6
        for lexicon in (prepare.CRISIS_RE, prepare.MEDICAL_RE, prepare.ANNOMI_DROP_RE):
            assert not lexicon.search(r["text"]), r["text"]
    capped = prepare.annomi(DATA, prepare.Args(data_dir=str(DATA), annomi_max=10), random.Random(0))
    assert [len(capped[s]) for s in ("train", "val", "test")] == [10, 5, 5]
