"""Conversation-level evaluation: play held-out conversations through the guard turn by turn.

Each conversation of ``safety/data/dialogues/`` in the chosen split is replayed as the
pipeline would see it: the guard reads every user turn with the earlier user turns, the
check-in state is derived from the decisions taken so far (``companion._triage``: a check-in
makes the next turn its answer; a clear no starts a quiet period), and the decision is stored
with the turn. The model is not run, so check-ins raised by the output guard are not counted.
Reports, with bootstrap intervals over conversations:

- benign conversations: per-turn check-in and redirect rates, share never interrupted;
- risk conversations: share caught (check-in or redirect) at the turn where risk first appears,
  how late otherwise; turns labelled crisis redirected at once, caught at all; check-in turns
  caught; medical turns redirected;
- the ship rule's catch rate: the share of distinct clean crisis and check-in messages of the
  split (each at its lowest over the rows that end with it, as ``calibrate.py`` counts) that
  are checked in or redirected as crisis.

``--conversations safety/data/holdout/conversations.jsonl`` replays a file of conversations
instead (the held-out set written blind in round 12, never trained or calibrated on); the
per-message catch rate is then not computed.

Usage:
    python safety/evaluate_conversations.py --run_dir runs/triage1 [--split val]
        [--artifact shipped|run] [--conversations FILE] [--only b7-,b8-] [--skip r1-017]

``--after_crisis "I want to kill myself tonight"`` plays every benign conversation a second
time after that message (whatever the guard did with it) and reports how many of its turns are
interrupted then (all of them, and the first ``--context_turns``, which still read it in the
context): a guard that carries a crisis in the context onto what follows shows here,
which the plain replay cannot show (benign conversations have no crisis turn).

``--only`` / ``--skip`` keep or drop conversations by id prefix (e.g. a round's new files
reported apart from the old ones); the per-message catch rate is then not computed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_RUN_DIR,
    EmbeddingCache,
    banner,
    cache_path,
    cross_reader_for,
    load_encoder_for,
    parse_args,
    read_jsonl,
)

from companion._triage import apply_triage, triage_state
from companion.safety import ClassifyItem, SafetyClassifier, encoder_inputs
from companion.safety.artifact import encoder_adapter_dir, load_artifact
from companion.types import Action, Category, Decision, Role, Turn


@dataclass
class Args:
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "folder from prepare.py"})
    split: str = field(default="val", metadata={"help": "val or test"})
    conversations: str = field(
        default="", metadata={"help": "replay this dialogue file instead of the split's"}
    )
    artifact: str = field(
        default="run", metadata={"help": "'run' ({run_dir}/artifact), 'shipped' or a folder"}
    )
    only: str = field(
        default="", metadata={"help": "comma-separated conversation id prefixes to keep"}
    )
    skip: str = field(
        default="", metadata={"help": "comma-separated conversation id prefixes to leave out"}
    )
    after_crisis: str = field(
        default="",
        metadata={"help": "also replay each benign conversation after this crisis message"},
    )
    context_turns: int = field(default=3, metadata={"help": "user turns the pipeline passes"})
    quiet_turns: int = field(default=3, metadata={"help": "PipelineConfig.check_in_quiet_turns"})
    bootstrap: int = field(default=1000, metadata={"help": "resamples for the intervals"})
    seed: int = field(default=13, metadata={"help": "bootstrap seed"})


_ACTION = {Decision.NONE: Action.ANSWERED, Decision.CHECK_IN: Action.CHECKED_IN}


def play(clf: SafetyClassifier, turns: list[dict[str, Any]], args: Args) -> list[Decision]:
    """The guard's decision for each user turn of one conversation, state included."""
    history: list[Turn] = []
    decisions = []
    for t in turns:
        state = triage_state(history, args.quiet_turns)
        context = [h.text for h in history if h.role is Role.USER][-args.context_turns :]
        verdict, _ = apply_triage(
            clf.classify(t["text"], Role.USER, context, state.check_in), state
        )
        decisions.append(verdict.decision)
        action = _ACTION.get(verdict.decision, Action.REDIRECTED)
        n = len(history)
        history += [
            Turn(Role.USER, t["text"], 0.0, verdict.category, action, dict(verdict.scores), n),
            Turn(
                Role.ASSISTANT, "(fixed or model reply)", 0.0, verdict.category, action, {}, n + 1
            ),
        ]
    return decisions


def catch_rate(clf: SafetyClassifier, run: Path, args: Args) -> dict[str, Any]:
    """The ship rule's catch rate on the split's distinct clean crisis and check-in messages."""
    from calibrate import CLEAN, per_message_min

    rows = [
        r
        for r in read_jsonl(run / "splits" / f"{args.split}.jsonl")
        if r["role"] == "user"
        and r["source"] in CLEAN[("user", "risk")]
        and r["label"] in ("crisis", "check_in")
    ]
    items = [
        ClassifyItem(r["text"], Role.USER, tuple(r.get("context", ())), r.get("last_assistant", ""))
        for r in rows
    ]
    caught = np.array(
        [float(v.fired and v.category is Category.CRISIS) for v in clf.classify_batch(items)]
    )
    distinct = per_message_min(rows, caught, np.ones(len(rows), dtype=bool))
    banner(f"messages ({args.split})")
    print(
        f"  catch rate, distinct clean crisis + check-in messages: {distinct.mean():.4f}"
        f" of {len(distinct)}"
    )
    return {"catch_rate_distinct": {"n": len(distinct), "mean": round(float(distinct.mean()), 4)}}


def dialogue_rows(path: Path) -> list[dict[str, Any]]:
    """The user turns of a file of labelled conversations (``safety/data/dialogues/`` format,
    e.g. the evaluation-only ``safety/data/holdout/conversations.jsonl``) as replay rows."""
    return [
        {
            "text": t["text"],
            "label": t["label"],
            "conversation": c["id"],
            "turn": i,
            "subtype": f"{c['kind']}/{c.get('pattern') or c.get('topic', '')}",
            "context": [p["text"] for p in c["turns"][:i]],
        }
        for c in read_jsonl(path)
        for i, t in enumerate(c["turns"])
    ]


def select(rows: list[dict[str, Any]], only: str, skip: str) -> list[dict[str, Any]]:
    """The rows whose conversation id starts with one of ``only``'s comma-separated prefixes
    (all when empty) and with none of ``skip``'s."""
    keep = tuple(p for p in only.split(",") if p)
    drop = tuple(p for p in skip.split(",") if p)
    return [
        r
        for r in rows
        if (not keep or r["conversation"].startswith(keep))
        and not (drop and r["conversation"].startswith(drop))
    ]


def by_conversation(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Dialogue rows grouped by conversation id (sorted), each conversation in turn order."""
    convs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        convs[r["conversation"]].append(r)
    return {cid: sorted(convs[cid], key=lambda r: r["turn"]) for cid in sorted(convs)}


def is_benign(turns: list[dict[str, Any]]) -> bool:
    """A benign support-seeking conversation: every turn ``none``, from a benign file."""
    return turns[0]["subtype"].startswith("benign") and all(t["label"] == "none" for t in turns)


def replay(
    clf: SafetyClassifier, rows: list[dict[str, Any]], args: Args
) -> tuple[dict[str, list[tuple[float, str]]], list[int | None]]:
    """Play the split's dialogue rows through ``clf`` turn by turn: per statistic, (value,
    conversation) pairs, and per risk conversation how many turns late it was caught (``None``:
    never)."""
    stats: dict[str, list[tuple[float, str]]] = defaultdict(list)
    late: list[int | None] = []
    for cid, turns in by_conversation(rows).items():
        decisions = play(clf, turns, args)
        labels = [t["label"] for t in turns]
        if is_benign(turns):
            for d in decisions:
                stats["benign_check_in"].append((float(d is Decision.CHECK_IN), cid))
                stats["benign_redirect"].append((float(d is Decision.REDIRECT), cid))
                stats["benign_interrupted"].append((float(d is not Decision.NONE), cid))
            stats["benign_never_interrupted"].append(
                (float(all(d is Decision.NONE for d in decisions)), cid)
            )
            if args.after_crisis:  # the re-trigger check: the same turns behind a crisis
                after = play(clf, [{"text": args.after_crisis}, *turns], args)[1:]
                hit = [float(d is not Decision.NONE) for d in after]
                stats["benign_after_crisis_interrupted"] += [(h, cid) for h in hit]
                stats["benign_after_crisis_in_context_interrupted"] += [  # still in the context
                    (h, cid) for h in hit[: args.context_turns]
                ]
                stats["benign_after_crisis_never_interrupted"].append((float(not any(hit)), cid))
            continue
        first = next((i for i, lab in enumerate(labels) if lab != "none"), None)
        if first is None:  # a risk conversation cut before its risk turn (a subset's rows)
            continue
        caught = [i for i, d in enumerate(decisions) if i >= first and d is not Decision.NONE]
        late.append(caught[0] - first if caught else None)
        stats["risk_caught_at_first"].append((float(bool(caught) and caught[0] == first), cid))
        stats["risk_caught_within_one"].append(
            (float(bool(caught) and caught[0] <= first + 1), cid)
        )
        for lab, d in zip(labels, decisions, strict=True):
            if lab == "crisis":
                stats["crisis_turn_redirected"].append((float(d is Decision.REDIRECT), cid))
                stats["crisis_turn_caught"].append((float(d is not Decision.NONE), cid))
            elif lab == "check_in":
                stats["check_in_turn_caught"].append((float(d is not Decision.NONE), cid))
            elif lab == "medical":
                stats["medical_turn_redirected"].append((float(d is Decision.REDIRECT), cid))
            else:
                stats["risk_conv_none_turn_interrupted"].append(
                    (float(d is not Decision.NONE), cid)
                )
    return stats, late


def interval(values: np.ndarray, groups: np.ndarray, args: Args) -> tuple[float, float, float]:
    """Mean of ``values`` and a bootstrap 95% interval resampling whole ``groups``."""
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    ids = np.unique(groups)
    by = {g: values[groups == g] for g in ids}
    rng = np.random.default_rng(args.seed)
    means = []
    for _ in range(args.bootstrap):
        pick = rng.choice(ids, len(ids))
        means.append(float(np.concatenate([by[g] for g in pick]).mean()))
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(args: Args) -> None:
    run = Path(args.run_dir)
    folder = (
        None
        if args.artifact == "shipped"
        else (run / "artifact" if args.artifact == "run" else Path(args.artifact))
    )
    head, policy = load_artifact(folder)
    adapter = encoder_adapter_dir(policy, folder)
    encoder = load_encoder_for(
        "embedded", adapter, policy.encoder_layers, policy.encoder_quantization
    )
    cache = EmbeddingCache(encoder, cache_path(run, encoder.name))
    clf = SafetyClassifier(cache, head, policy, cross_reader_for(policy, folder))
    print(f"policy {policy.policy_version}; split {args.split}")

    if args.conversations:
        rows = dialogue_rows(Path(args.conversations))
        args.split = Path(args.conversations).parent.name
    else:
        rows = [
            r
            for r in read_jsonl(run / "splits" / f"{args.split}.jsonl")
            if r["source"] == "dialogues"
        ]
    rows = select(rows, args.only, args.skip)
    # every text the replay can encode (newest, window, the turns before it) in one batch
    texts = set()
    for r in rows:
        context = tuple(r["context"][-args.context_turns :])
        newest, window = encoder_inputs(ClassifyItem(r["text"], Role.USER, context), policy)
        texts.add(newest)
        if window is not None:
            texts |= {window, window[: -len(newest) - 1]}
    cache.encode(sorted(texts))
    stats, late = replay(clf, rows, args)
    subset = args.only or args.skip
    messages = {} if args.conversations or subset else catch_rate(clf, run, args)
    cache.save()

    banner(
        f"conversations ({args.split}): {len({r['conversation'] for r in rows})}; "
        "bootstrap 95% intervals over conversations"
    )
    out: dict[str, Any] = {"policy": policy.policy_version, "split": args.split}
    for name, pairs in stats.items():
        values = np.array([v for v, _ in pairs])
        groups = np.array([g for _, g in pairs])
        mean, lo, hi = interval(values, groups, args)
        out[name] = {"n": len(values), "mean": round(mean, 4), "ci": [round(lo, 4), round(hi, 4)]}
        print(f"  {name:34s} n={len(values):5d}  {mean:.3f} [{lo:.3f}, {hi:.3f}]")
    out.update(messages)
    lateness = [x for x in late if x is not None]
    out["risk_lateness"] = {
        "never_caught": sum(x is None for x in late),
        "turns_late": {str(k): lateness.count(k) for k in sorted(set(lateness))},
    }
    print(
        f"  risk conversations: turns late when caught {out['risk_lateness']['turns_late']}, "
        f"never caught {out['risk_lateness']['never_caught']}"
    )
    out["only"], out["skip"] = args.only, args.skip
    name = f"{args.split}_subset" if subset else args.split
    target = run / "eval" / f"conversations_{name}_{policy.policy_version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n", "utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(parse_args(Args))
