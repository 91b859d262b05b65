"""Policy 5, step 2 of 2: calibrate the cross-encoder on validation and write the artifact.

Reads ``{run_dir}/cross/`` from ``train_cross.py``. The rule was written in the classifier card
("Round 10 rule") before any of these numbers:

1. the epoch with the highest validation risk AUPRC (``val_logits_e*.npz``), unless ``--epoch``
   names one;
2. a temperature fitted by validation log-loss over the four classes;
3. the medical threshold: the highest that keeps ``--medical_recall`` of the distinct clean
   medical messages;
4. the crisis threshold: the highest that redirects ``--crisis_redirect`` of the distinct clean
   crisis messages of the explicit kinds (``--explicit``, round 13; ``''``: all) at once;
5. the risk (check-in) threshold: the highest at which, in the turn-by-turn replay of the
   validation conversations (``evaluate_conversations.py``, check-in state included), three
   floors hold (the "Round 12 rule"): ``--catch_rate`` of the distinct clean crisis and check-in
   messages caught (redirected as crisis or checked in; a medical redirect does not count),
   ``--first_turn`` of the risk conversations caught at the turn risk first appears, and
   ``--within_one`` caught at most one turn late. The search walks down from the catch-rate
   threshold in steps of 3%.
6. round 31: with ``--after_crisis``, validation's benign conversations are played again behind
   that crisis message, and a policy that interrupts more than ``--after_crisis_max`` of their
   turns that still read it in their context cannot be chosen (the re-trigger failure of
   round 30).

Replies keep the reply side of the artifact ``--reply_artifact`` (default: the shipped one):
its head's assistant weights, its encoder adapter and its assistant thresholds. Writes
``{run_dir}/artifact_cross/`` (``--install`` copies it over the shipped artifact).

Usage:
    python safety/calibrate_cross.py --run_dir runs/x1 [--version 5.0] [--epoch N]
        [--install]
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from _cascade import AFTER
from _common import DEFAULT_RUN_DIR, banner, parse_args, read_jsonl
from calibrate import _USER_RISK, CLEAN, INSTALL_DIR, per_message_min, recall_threshold
from train_cross import user_rows, val_summary

from companion.safety import Policy, SafetyClassifier, load_artifact
from companion.safety.artifact import encoder_adapter_dir
from companion.safety.cross import CLASSES
from companion.safety.encoding import adapter_digest
from companion.types import Role

EXPLICIT = (
    "explicit_ideation,short_present_intent,plan_or_means,crisis_plans_time_r7,method_seeking,"
    "method_questions_plain,method_requests_impersonal,self_harm,overdose_in_progress,"
    "abuse_danger,danger_at_home_escalating,harm_to_others"
)
"""Round 13: the crisis kinds that are redirected at once (issue 14's "explicit intent, plan or
method", self-harm, an overdose taken, danger at home, harm to others); the others must be
caught, by a check-in at least."""


@dataclass
class Args:
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "folder of train_cross.py"})
    epoch: int = field(default=0, metadata={"help": "epoch to use (0: best validation AUPRC)"})
    version: str = field(default="5.0", metadata={"help": "policy version (data hash appended)"})
    catch_rate: float = field(default=0.881, metadata={"help": "crisis + check-in caught"})
    first_turn: float = field(default=0.90, metadata={"help": "risk conversations, first turn"})
    within_one: float = field(default=0.95, metadata={"help": "... at most one turn late"})
    crisis_redirect: float = field(default=0.95, metadata={"help": "crisis redirected at once"})
    explicit: str = field(
        default=EXPLICIT,
        metadata={"help": "hand-written crisis subtypes the redirect floor counts ('': all)"},
    )
    medical_recall: float = field(default=0.95, metadata={"help": "medical recall floor"})
    reply_artifact: str = field(default="", metadata={"help": "reply side (empty: shipped)"})
    exclude: str = field(default="cssrs", metadata={"help": "as train_cross.py"})
    install: bool = field(default=False, metadata={"help": "copy over the shipped artifact"})
    second_opinion: bool = field(
        default=False, metadata={"help": "rounds 27-28: the head confirms redirects (_cascade.py)"}
    )
    ask: str = field(
        default="0.03", metadata={"help": "the cascade's t_ask grid, comma-separated (round 30)"}
    )
    after_crisis: str = field(
        default="",
        metadata={"help": "round 31: also replay validation's benign conversations after this"},
    )
    after_crisis_max: float = field(
        default=1.0,
        metadata={"help": "... and interrupt at most this share of their turns in its context"},
    )


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising mean log-loss (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    lo, hi = -3.0, 3.0
    g = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def write_policy(out: Path, policy: Policy) -> None:
    (out / "policy.json").write_text(
        json.dumps(policy.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


class Memo:
    """A user reader whose probabilities are remembered per text pair (the replay search asks
    for the same pairs at every threshold)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.seen: dict[tuple[str, str], np.ndarray] = {}

    def probabilities(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        new = list(dict.fromkeys(p for p in pairs if p not in self.seen))
        if new:
            for pair, row in zip(new, self.reader.probabilities(new), strict=True):
                self.seen[pair] = row
        return np.stack([self.seen[p] for p in pairs]) if pairs else np.zeros((0, len(CLASSES)))


def replay_floors(clf: Any, rows: list[dict[str, Any]], after_crisis: str = "") -> dict[str, float]:
    """The replay's conversation figures at ``clf``'s thresholds (with ``after_crisis``, also
    those of the benign conversations played again behind that crisis message)."""
    from evaluate_conversations import Args as ReplayArgs
    from evaluate_conversations import replay

    stats, _ = replay(clf, rows, ReplayArgs(after_crisis=after_crisis))
    return {k: float(np.mean([v for v, _ in pairs])) for k, pairs in stats.items()}


def search_risk(
    clf: Any,
    policy: Policy,
    start: float,
    rows: list[dict[str, Any]],
    args: Args,
    stop_above: float = 1.0,
) -> tuple[float, dict[str, float]]:
    """The highest risk threshold at or below ``start`` (3% steps) at which the replay meets
    ``--first_turn`` and ``--within_one``; ``clf.policy`` is left at it. The walk gives up once
    more than ``stop_above`` of the benign turns are interrupted (such a policy cannot ship)."""
    t = start
    while True:
        user = {**policy.thresholds["user"], "risk": round(t, 6)}
        clf.policy = replace(policy, thresholds={**policy.thresholds, "user": user})
        figures = replay_floors(clf, rows, args.after_crisis)
        first = figures.get("risk_caught_at_first", 1.0)  # no risk conversation: no floor
        within = figures.get("risk_caught_within_one", 1.0)
        ok = first >= args.first_turn and within >= args.within_one
        after = figures.get(AFTER, float("nan"))
        print(
            f"  risk {t:.5f}: first turn {first:.3f}, within one {within:.3f}, benign "
            f"interrupted {figures.get('benign_interrupted', float('nan')):.3f}"
            + (f", after the crisis {after:.3f}" if args.after_crisis else "")
            + ("  <- chosen" if ok else ""),
            flush=True,
        )
        if ok or t < 1e-5 or figures.get("benign_interrupted", 0.0) > stop_above:
            return round(t, 6), figures
        t *= 0.97


def main(args: Args) -> None:
    run = Path(args.run_dir)
    cross = run / "cross"
    excluded = {s for s in args.exclude.split(",") if s}
    val = user_rows(run / "splits" / "val.jsonl", excluded)
    epochs = sorted(int(p.stem.split("_e")[-1]) for p in cross.glob("val_logits_e*.npz"))
    banner("epochs (validation AUPRC)")
    best, best_ap = 0, -1.0
    for e in epochs:
        summary = val_summary(np.load(cross / f"val_logits_e{e}.npz")["logits"], val)
        print(f"  epoch {e}: {summary}")
        if summary["risk"] > best_ap:
            best, best_ap = e, summary["risk"]
    best = args.epoch or best
    logits = np.load(cross / f"val_logits_e{best}.npz")["logits"]
    if len(logits) != len(val):
        raise SystemExit(f"{len(logits)} logits for {len(val)} validation rows: rerun training")
    y = np.array([CLASSES.index(r["label"]) for r in val])
    temperature = fit_temperature(logits, y)
    p = softmax(logits / temperature)
    crisis, medical = p[:, CLASSES.index("crisis")], p[:, CLASSES.index("medical")]
    risk = p[:, CLASSES.index("check_in")] + crisis
    print(f"  chosen epoch {best}; temperature {temperature:.3f}")

    sources = np.array([r["source"] for r in val])
    labels = np.array([r["label"] for r in val])
    medical_pos = np.isin(sources, list(CLEAN[("user", "medical")])) & (labels == "medical")
    t_medical = recall_threshold(per_message_min(val, medical, medical_pos), args.medical_recall)
    clean = np.isin(sources, list(_USER_RISK))
    redirect_pos = clean & (labels == "crisis")
    if args.explicit:  # round 13: the redirect floor counts the explicit kinds only
        kinds = set(args.explicit.split(","))
        texts = {r["text"] for r in val if r["source"] == "handwritten" and r["subtype"] in kinds}
        redirect_pos &= np.array([r["text"] in texts for r in val])
        print(f"  crisis floor on {len(texts)} distinct explicit crisis messages")
    t_crisis = recall_threshold(per_message_min(val, crisis, redirect_pos), args.crisis_redirect)
    caught = np.where(crisis >= t_crisis, 1.0, np.where(medical >= t_medical, 0.0, risk))
    t_risk = recall_threshold(
        per_message_min(val, caught, clean & np.isin(labels, ["crisis", "check_in"])),
        args.catch_rate,
    )
    thresholds = {
        "crisis": round(t_crisis, 6),
        "medical": round(t_medical, 6),
        "risk": round(t_risk, 6),
    }
    banner("user thresholds at the catch-rate floor")
    print(f"  {thresholds}")

    reply_folder = args.reply_artifact or None
    head, reply_policy = load_artifact(reply_folder)
    # rebuilt from a shipped cascade, the head keeps its own policy's threshold and name
    second = dict(reply_policy.second_opinion)
    head_crisis = second.get("head", float(reply_policy.thresholds["user"]["crisis"]))
    replies = f"policy {reply_policy.policy_version}"
    replies = reply_policy.training["replies"] if second else replies
    out = run / "artifact_cross"
    shutil.rmtree(out, ignore_errors=True)
    (out / "cross").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(cross / f"adapter_e{best}" / name, out / "cross" / name)
    shutil.copyfile(cross / f"head_e{best}.npz", out / "cross" / "head.npz")
    adapter = encoder_adapter_dir(reply_policy, reply_folder)
    if adapter is not None:
        shutil.copytree(adapter, out / reply_policy.encoder_adapter)
    # the cascade asks the head about user messages: it keeps its user weights
    (head if args.second_opinion else head.restricted([Role.ASSISTANT])).save(out / "head.npz")
    report = json.loads((cross / "report.json").read_text("utf-8"))
    manifest = json.loads((run / "manifest.json").read_text("utf-8"))
    policy = Policy(
        policy_version=f"{args.version}+{manifest['train_hash'][:8]}",
        labels=("crisis", "medical", "risk"),
        thresholds={"user": thresholds, "assistant": dict(reply_policy.thresholds["assistant"])},
        encoder=reply_policy.encoder,
        encoder_adapter=reply_policy.encoder_adapter,
        encoder_layers=reply_policy.encoder_layers,
        encoder_quantization=reply_policy.encoder_quantization,
        context_turns=report["context_turns"],
        context_max_words=reply_policy.context_max_words,
        user_features=reply_policy.user_features,
        context_rule=reply_policy.context_rule,
        ngram_buckets=reply_policy.ngram_buckets,
        ngram_scale=reply_policy.ngram_scale,
        user_reader="cross",
        cross_dir="cross",
        cross_temperature=round(temperature, 4),
        training={
            "cross_encoder": {**report, "epoch": best},
            "calibration": {
                "catch_rate": args.catch_rate,
                "explicit": args.explicit,
                "first_turn": args.first_turn,
                "within_one": args.within_one,
                "crisis_redirect": args.crisis_redirect,
                "medical_recall": args.medical_recall,
                "temperature": round(temperature, 4),
            },
            "replies": replies,
            "train_hash": manifest["train_hash"],
            "cross_adapter_digest": adapter_digest(out / "cross"),
            "encoder_adapter_digest": adapter_digest(adapter) if adapter is not None else "",
        },
    )
    write_policy(out, policy)
    banner("risk threshold: conversation floors in the validation replay")
    clf = SafetyClassifier.from_defaults(artifact=out)
    clf.cross = Memo(clf.cross)
    dialogue = [r for r in read_jsonl(run / "splits" / "val.jsonl") if r["source"] == "dialogues"]
    if args.second_opinion:
        import _cascade

        banner("rounds 27-30 cascade: the grid of (t_ask, t_sure)")
        keep = clean & np.isin(labels, ["crisis", "check_in"])
        rows = [r for r, k in zip(val, keep, strict=True) if k]
        policy, figures, table = _cascade.search(
            clf,
            policy,
            head_crisis,
            rows,
            redirect_pos[keep],
            np.ones(len(rows), dtype=bool),
            dialogue,
            args,
            lambda c, p, t, d, a: search_risk(c, p, t, d, a, _cascade.STOP_ABOVE),
        )
        thresholds = dict(policy.thresholds["user"])
        training = {**policy.training, "cascade": table}
    else:
        t_risk, figures = search_risk(clf, policy, t_risk, dialogue, args)
        if figures.get(AFTER, 0.0) > args.after_crisis_max:
            raise SystemExit(f"after the crisis {figures[AFTER]:.3f} > {args.after_crisis_max}")
        thresholds["risk"] = t_risk
        training = dict(policy.training)
    training["replay"] = {k: round(v, 4) for k, v in figures.items()}
    policy = replace(
        policy, thresholds={**policy.thresholds, "user": thresholds}, training=training
    )
    write_policy(out, policy)
    print(f"\nwrote {out} (policy {policy.policy_version}; user thresholds {thresholds})")
    if args.install:
        shutil.rmtree(INSTALL_DIR, ignore_errors=True)
        shutil.copytree(out, INSTALL_DIR)
        print(f"installed into {INSTALL_DIR}")


if __name__ == "__main__":
    main(parse_args(Args))
