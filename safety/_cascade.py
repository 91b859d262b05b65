"""Round 28: calibrate the cascade "the cross-encoder asks the head before a redirect".

A user message whose cross-encoder crisis score reaches ``t_ask`` (the policy's user crisis
threshold) but not ``t_sure`` is redirected as crisis only if the head (policy 3.4's user
weights, its context rule and its own user crisis threshold) agrees; at ``t_sure`` or above
the cross-encoder redirects alone (``Policy.second_opinion``). The rule, written in the
classifier card ("Round 27 rule"; round 28 fixed ``t_ask`` at 0.03, since round 27's choice,
X8's own threshold, could only remove redirects; round 30 searches ``--ask``, a grid kept
below the cross-encoder's own threshold): for every pair of the grid the
pair must redirect at once ``--crisis_redirect`` of the distinct clean explicit-kind crisis
messages; the risk threshold is then searched as for the cross-encoder alone; of the pairs that
meet every floor the one with the fewest benign validation turns interrupted is chosen (ties:
the lower ``t_ask``, then the lower ``t_sure``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from calibrate import per_message_min, recall_threshold

from companion.safety import ClassifyItem, Policy
from companion.types import Category, Decision, Role

AFTER = "benign_after_crisis_in_context_interrupted"
"""Round 31's bound (``--after_crisis_max``): of the turns of validation's benign conversations
that read ``--after_crisis`` in their context, the share interrupted."""
SURE = (0.15, 0.3, 0.5, 0.9, 1.0)
"""The grid of the rule; ``t_sure`` 1.0 means the cross-encoder never redirects alone."""
STOP_ABOVE = 0.257
"""Policy 3.4's share of benign validation turns interrupted (round 16): a pair's risk search
gives up above it, since such a policy cannot ship."""


class HeadMemo:
    """The classifier's head scores remembered per item (every pair asks for the same ones)."""

    def __init__(self, clf: Any) -> None:
        self.score = clf._head_scores
        self.seen: dict[ClassifyItem, np.ndarray] = {}
        clf._head_scores = self

    def __call__(self, items: list[ClassifyItem]) -> np.ndarray:
        new = list(dict.fromkeys(i for i in items if i not in self.seen))
        if new:
            for item, row in zip(new, self.score(new), strict=True):
                self.seen[item] = row
        return np.stack([self.seen[i] for i in items]) if items else self.score([])


def with_pair(policy: Policy, ask: float, sure: float, head: float, risk: float) -> Policy:
    user = {**policy.thresholds["user"], "crisis": ask, "risk": round(risk, 6)}
    return replace(
        policy,
        thresholds={**policy.thresholds, "user": user},
        second_opinion={"sure": sure, "head": head},
    )


def search(
    clf: Any,
    policy: Policy,
    head_threshold: float,
    rows: list[dict[str, Any]],
    explicit: np.ndarray,
    caught_pos: np.ndarray,
    dialogue: list[dict[str, Any]],
    args: Any,
    search_risk: Any,
) -> tuple[Policy, dict[str, float], list[dict[str, Any]]]:
    """The chosen policy, its replay figures and one line per pair of the grid.

    ``rows`` are the validation user rows whose masks ``explicit`` (the explicit-kind crisis
    messages of the redirect floor) and ``caught_pos`` (the clean crisis and check-in messages
    of the catch-rate floor) are given; ``search_risk`` is ``calibrate_cross.search_risk``."""
    HeadMemo(clf)
    items = [
        ClassifyItem(r["text"], Role.USER, tuple(r.get("context", ())), r.get("last_assistant", ""))
        for r in rows
    ]
    table, best = [], None
    for ask in sorted(float(a) for a in args.ask.split(",")):
        for sure in SURE:
            clf.policy = with_pair(policy, ask, sure, head_threshold, 1.0)
            verdicts = clf.classify_batch(items)
            crisis = np.array(
                [
                    v.category is Category.CRISIS and v.decision is Decision.REDIRECT
                    for v in verdicts
                ]
            )
            medical = np.array([v.category is Category.MEDICAL for v in verdicts])
            redirected = float(per_message_min(rows, crisis.astype(float), explicit).mean())
            line: dict[str, Any] = {"ask": ask, "sure": sure, "explicit_redirected": redirected}
            if redirected < args.crisis_redirect:
                table.append(line)
                print(f"  ask {ask} sure {sure}: explicit redirected {redirected:.3f} (floor)")
                continue
            risk = np.array([float(v.scores.get("risk", 0.0)) for v in verdicts])
            caught = np.where(crisis, 1.0, np.where(medical, 0.0, risk))
            start = recall_threshold(per_message_min(rows, caught, caught_pos), args.catch_rate)
            pair = with_pair(policy, ask, sure, head_threshold, start)
            print(f"  ask {ask} sure {sure}: explicit redirected {redirected:.3f}", flush=True)
            t_risk, figures = search_risk(clf, pair, start, dialogue, args)
            ok = (
                figures.get("risk_caught_at_first", 1.0) >= args.first_turn
                and figures.get("risk_caught_within_one", 1.0) >= args.within_one
                and figures.get(AFTER, 0.0) <= args.after_crisis_max  # round 31
            )
            line.update(risk=t_risk, ok=ok, **{k: round(v, 4) for k, v in figures.items()})
            table.append(line)
            fewer = best is None or figures["benign_interrupted"] < best[1]["benign_interrupted"]
            if ok and fewer:
                best = (with_pair(policy, ask, sure, head_threshold, t_risk), figures)
    if best is None:
        raise SystemExit("no pair of the grid meets the floors")
    clf.policy = best[0]
    return best[0], best[1], table
