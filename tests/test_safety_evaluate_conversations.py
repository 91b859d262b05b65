"""The conversation replay of `safety/evaluate_conversations.py`, with a fake classifier: what
it counts as interrupted, caught and late, and how `--only` / `--skip` pick conversations."""

from __future__ import annotations

from companion.types import Category, Decision, Verdict

from .conftest import safety_script

ev = safety_script("evaluate_conversations")


class WordClassifier:
    """Redirects a message containing "pills", or any message while "pills" is in its context;
    checks in on one containing "gone"."""

    def classify(self, text, role, context, check_in):
        if "pills" in text or any("pills" in c for c in context):
            category, decision = Category.CRISIS, Decision.REDIRECT
        elif "gone" in text:
            category, decision = Category.CRISIS, Decision.CHECK_IN
        else:
            category, decision = Category.NONE, Decision.NONE
        return Verdict(
            category, {"crisis": 0.0, "medical": 0.0, "risk": 0.9}, {}, "t", decision=decision
        )


def rows(cid, kind, turns):
    return [
        {
            "text": text,
            "label": label,
            "conversation": cid,
            "turn": i,
            "subtype": f"{kind}/x",
            "context": [t for t, _ in turns[:i]],
        }
        for i, (text, label) in enumerate(turns)
    ]


def test_replay_counts_interruptions_and_lateness():
    data = [
        *rows("b1-001", "benign", [("long day", "none"), ("i feel gone", "none")]),
        *rows("b1-002", "benign", [("hi", "none"), ("bye", "none")]),
        *rows("r1-001", "risk", [("hi", "none"), ("no point", "crisis"), ("pills here", "crisis")]),
        *rows("r1-002", "risk", [("hi", "none"), ("so tired", "crisis")]),
    ]
    stats, late = ev.replay(WordClassifier(), data, ev.Args())
    assert [v for v, _ in stats["benign_interrupted"]] == [0, 1, 0, 0]
    assert [v for v, _ in stats["benign_never_interrupted"]] == [0, 1]
    assert late == [1, None]  # caught a turn late, and never
    assert [v for v, _ in stats["crisis_turn_redirected"]] == [0, 1, 0]


def test_select_keeps_and_drops_by_id_prefix():
    data = [{"conversation": c} for c in ("b7-001", "b8-002", "r1-017", "r1-018")]
    ids = lambda rs: [r["conversation"] for r in rs]  # noqa: E731
    assert ids(ev.select(data, "", "")) == ids(data)
    assert ids(ev.select(data, "b7-,b8-", "")) == ["b7-001", "b8-002"]
    assert ids(ev.select(data, "", "r1-017,b7-")) == ["b8-002", "r1-018"]
    assert ids(ev.select(data, "r1-", "r1-017")) == ["r1-018"]


def test_after_crisis_replays_benign_conversations_behind_a_crisis_message():
    data = [
        *rows("b1-001", "benign", [("long day", "none"), ("tea now", "none")]),
        *rows("b1-002", "benign", [("hi", "none")]),
    ]
    plain, _ = ev.replay(WordClassifier(), data, ev.Args())
    assert "benign_after_crisis_interrupted" not in plain
    stats, _ = ev.replay(WordClassifier(), data, ev.Args(after_crisis="my pills are here"))
    assert [v for v, _ in stats["benign_interrupted"]] == [0, 0, 0]  # unchanged
    assert [v for v, _ in stats["benign_after_crisis_interrupted"]] == [1, 1, 1]
    assert [v for v, _ in stats["benign_after_crisis_never_interrupted"]] == [0, 0]
    short, _ = ev.replay(
        WordClassifier(), data, ev.Args(after_crisis="my pills are here", context_turns=1)
    )
    assert [v for v, _ in short["benign_after_crisis_in_context_interrupted"]] == [1, 1]
