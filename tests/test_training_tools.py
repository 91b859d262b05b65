"""The training evaluation's pure parts: held-out prompts, the decoding rule, the side-by-side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

from choose_decoding import choose, smallest_cap  # noqa: E402
from replies import heldout_prompts  # noqa: E402
from side_by_side import make, preference, score  # noqa: E402


def _ex(source: str, *texts: str, last: bool = False) -> dict:
    roles = ["user", "assistant"]
    ex = {
        "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)],
        "source": source,
    }
    if last:
        ex["train_on"] = "last"
    return ex


def test_heldout_prompts_cover_every_reply_of_a_dialogue_and_only_the_last_otherwise():
    dialogue = _ex("style", "u1", "a1", "u2", "a2")
    single = _ex("annomi", "v1", "b1", "v2", "b2", last=True)
    prompts = heldout_prompts([dialogue, single], limit=10, seed=1)
    assert [len(p["conversation"]) for p in prompts] == [1, 3, 3]
    assert [p["reference"] for p in prompts] == ["a1", "a2", "b2"]
    assert prompts[0]["conversation"] == [{"role": "user", "content": "u1"}]


def test_heldout_prompts_sample_is_deterministic_distinct_and_bounded():
    examples = [_ex("style", f"u{i}", "a") for i in range(30)] + [_ex("style", "u0", "a")]
    a = heldout_prompts(examples, limit=10, seed=7)
    assert a == heldout_prompts(examples, limit=10, seed=7) and len(a) == 10
    assert len({json.dumps(p["conversation"]) for p in a}) == 10
    assert a != heldout_prompts(examples, limit=10, seed=8)


def _result(score: float, ended: float = 1.0, flagged: float = 0.0, words: float = 0.5) -> dict:
    metrics = {"ended_on_own": ended, "guard_flagged": flagged, "words_20_90": words}
    return {"score": score, "metrics": {**metrics, "distinct_2": 0.5}}


def test_decoding_rule_filters_then_takes_the_best_and_breaks_ties_by_length():
    too_long = _result(0.9, ended=0.9)
    flagged = _result(0.9, flagged=0.05)
    good = _result(0.6, words=0.7)
    tied_longer = _result(0.59, words=0.9)
    worse = _result(0.3, words=1.0)
    assert choose([too_long, flagged, good, tied_longer, worse]) is tied_longer
    assert choose([too_long, flagged]) is None


def test_smallest_cap_is_the_first_that_almost_every_reply_ends_within():
    assert smallest_cap([50] * 100, [True] * 100) == 120
    assert smallest_cap([50] * 95 + [150] * 5, [True] * 100) == 160
    assert smallest_cap([50] * 90 + [200] * 10, [True] * 90 + [False] * 10) == 200


def test_side_by_side_hides_the_order_and_unblinds_the_ratings(tmp_path: Path):
    rows = [{"conversation": [], "source": "fixed", "previous": {"text": "x"}}]
    rows += [
        {
            "conversation": [{"role": "user", "content": f"m{i}"}],
            "source": "style",
            "previous": {"text": f"old {i}"},
            "tuned": {"text": f"new {i}"},
        }
        for i in range(20)
    ]
    replies = tmp_path / "replies.jsonl"
    replies.write_text("".join(json.dumps(r) + "\n" for r in rows))
    make(replies, tmp_path / "sxs", "previous", "tuned", n=20, seed=3)
    items = [json.loads(line) for line in (tmp_path / "sxs" / "items.jsonl").open()]
    key = json.loads((tmp_path / "sxs" / "key.json").read_text())
    assert len(items) == 20 and "tuned" not in json.dumps(items)  # no model name in the items
    assert {key[i["id"]]["A"] for i in items} == {"previous", "tuned"}  # both orders occur
    # the rater always picks the new reply, wherever it is
    ratings = [
        {"id": i["id"], "preferred": "A" if i["A"].startswith("new") else "B"} for i in items
    ]
    ratings[0]["preferred"] = "tie"
    (tmp_path / "sxs" / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ratings))
    result = score(tmp_path / "sxs", seed=1)
    assert result["tuned"]["preferred"] == pytest.approx(19.5 / 20)
    assert result["previous"]["preferred"] == pytest.approx(0.5 / 20)
    assert result["ties"] == 1 and result["tuned"]["ci95"][0] <= 0.975 <= result["tuned"]["ci95"][1]


def test_preference_counts_ties_half():
    assert preference(["a", "b", "tie", "a"], "a") == pytest.approx(2.5 / 4)
