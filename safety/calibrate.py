"""Step 4 of 5: choose the thresholds on the validation split and write the artifact.

Policy, per role (three levels: a crisis score at its threshold redirects, else a risk score at
its threshold checks in, else a medical score at its threshold redirects):
- ``crisis`` (redirect) is tuned for recall first: the highest threshold whose validation
  recall on the clean crisis-labelled sources (hand-written, synthetic windows, conversations,
  dialogues, check-in answers) is at least ``crisis_recall``, counting each distinct message
  once (at its lowest score).
- ``risk`` (check-in) is the highest threshold at which the *catch rate* (check-in or
  redirect) on the clean crisis and check-in messages is at least ``catch_rate``, given the
  crisis threshold.
- ``medical`` is tuned for precision at high recall: the lowest threshold whose validation
  precision (against every other validation row of that role) is at least
  ``medical_precision`` and whose recall on the clean medical sources (hand-written and
  windows: the requests the policy is about) is at least ``medical_recall``. If no threshold
  reaches that precision, the best-precision one that keeps the recall floor.

Reads ``head.npz`` from ``train.py`` and ``splits/val.jsonl``; never a test row. Writes
``{run_dir}/artifact/{head.npz,policy.json}`` and, with ``--install``, copies them into the
package (``src/companion/safety/artifacts/default``).

Usage:
    python safety/calibrate.py [--run_dir runs/safety] [--install]
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    ADAPTER_DIR,
    DEFAULT_RUN_DIR,
    LABELS,
    REPO_ROOT,
    EmbeddingCache,
    banner,
    cache_path,
    classifier_scores,
    load_encoder_for,
    parse_args,
    read_jsonl,
    targets,
)
from train import scaffold_policy

from companion.safety import LinearHead, Policy, save_artifact
from companion.safety.encoding import adapter_digest
from companion.safety.normalize import NORMALIZATION_VERSION
from companion.types import Role

_USER_RISK = {"handwritten", "windows", "conversations", "dialogues", "check_in_answers"}
CLEAN = {
    ("user", "crisis"): _USER_RISK,
    ("user", "risk"): _USER_RISK,
    ("user", "medical"): {"handwritten", "windows", "dialogues"},
    ("assistant", "crisis"): {"handwritten"},
    ("assistant", "risk"): {"handwritten", "counselchat"},
    ("assistant", "medical"): {"handwritten"},
}
INSTALL_DIR = REPO_ROOT / "src" / "companion" / "safety" / "artifacts" / "default"


@dataclass
class Args:
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "folder from train.py"})
    crisis_recall: float = field(
        default=0.95, metadata={"help": "val recall floor of the crisis redirect"}
    )
    catch_rate: float = field(
        default=0.97,
        metadata={"help": "val floor: crisis and check-in messages checked in or redirected"},
    )
    assistant_catch_rate: float = field(
        default=0.97, metadata={"help": "replies: unsafe or risk-raising replies withheld"}
    )
    medical_recall: float = field(default=0.92, metadata={"help": "val recall floor, medical"})
    medical_precision: float = field(
        default=0.95, metadata={"help": "val precision kept while lowering the medical threshold"}
    )
    assistant_crisis_recall: float = field(default=0.90, metadata={"help": "replies, crisis"})
    first_risk_turns: bool = field(
        default=False,
        metadata={
            "help": "user crisis/risk floors: conversation turns up to the first risk turn only"
        },
    )
    install: bool = field(default=False, metadata={"help": "copy the artifact into the package"})
    version: str = field(default="3.4", metadata={"help": "policy version prefix"})

    def __post_init__(self) -> None:
        for name in (
            "crisis_recall",
            "catch_rate",
            "assistant_catch_rate",
            "medical_recall",
            "medical_precision",
            "assistant_crisis_recall",
        ):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in (0, 1]")


def recall_threshold(pos_scores: np.ndarray, floor: float) -> float:
    """The highest threshold whose recall on ``pos_scores`` is at least ``floor``."""
    s = np.sort(pos_scores)
    misses = int(np.floor(len(s) * (1.0 - floor) + 1e-9))
    return float(s[min(misses, len(s) - 1)])


def precision_at_recall(
    scores: np.ndarray, y: np.ndarray, clean_pos: np.ndarray, floor: float, precision: float
) -> float:
    """The lowest threshold whose precision is at least ``precision`` and whose recall on
    ``clean_pos`` is at least ``floor`` (most recall at that precision); when none reaches the
    precision, the best-precision threshold among those with recall >= ``floor``."""
    ceiling = recall_threshold(scores[clean_pos], floor)
    candidates = np.unique(scores[scores <= ceiling])
    prec = np.array([float((y[scores >= t] == 1).mean()) for t in candidates])
    ok = candidates[prec >= precision]
    if len(ok):
        return float(ok.min())
    return float(candidates[np.flatnonzero(prec == prec.max())[-1]])


# Recall floors whose cost calibrate.py reports for user crisis messages. Only the configured
# floor (--crisis_recall) sets the threshold; the others are for whoever owns that choice.
TRADEOFF_FLOORS = (0.97, 0.95, 0.93, 0.90)


def floor_tradeoff(
    positives: np.ndarray,
    scores: np.ndarray,
    fired_other: np.ndarray,
    groups: dict[str, np.ndarray],
    floors: tuple[float, ...] = TRADEOFF_FLOORS,
) -> list[dict[str, float | None]]:
    """What each recall floor costs: the threshold it gives on ``positives`` (one score per
    distinct message, rounded as the shipped threshold is), the recall reached, and per group
    (a mask over ``scores``) the share of rows redirected: crisis at that threshold, or
    ``fired_other`` (the other labels at their own thresholds); ``None`` for an empty group."""
    out = []
    for floor in floors:
        t = round(recall_threshold(positives, floor) - 1e-4, 4)
        fired = (scores >= t) | fired_other
        row: dict[str, float | None] = {
            "floor": floor,
            "threshold": t,
            "recall": float((positives >= t).mean()),
        }
        for name, mask in groups.items():
            row[name] = float(fired[mask].mean()) if mask.any() else None
        out.append(row)
    return out


def per_message_min(rows: list[dict], scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One score per distinct message among ``rows[mask]``: its lowest over the rows that end
    with it. A synthetic window repeats a hand-written message with benign turns before it;
    counting it twice would let a few hard messages set the recall floor on their own."""
    lowest: dict[str, float] = {}
    for r, s, m in zip(rows, scores, mask, strict=True):
        if m:
            lowest[r["text"]] = min(float(s), lowest.get(r["text"], 1.0))
    return np.array(list(lowest.values()), dtype=np.float32)


def user_floor_tradeoff(
    rows: list[dict], scores: np.ndarray, y: np.ndarray, sources: np.ndarray, medical: float
) -> list[dict[str, float | None]]:
    """:func:`floor_tradeoff` for user messages on the validation split."""
    clean = np.isin(sources, list(CLEAN[("user", "crisis")])) & (y[:, 0] == 1)
    none = y.sum(axis=1) == 0
    files = np.array([r.get("file", "") for r in rows])
    groups = {
        "all_none": none,
        "everyday": none & ((sources == "annomi") | (files == "everyday")),
        "hard_negatives": files == "hard_negatives",
    }
    positives = per_message_min(rows, scores[:, 0], clean)
    return floor_tradeoff(positives, scores[:, 0], scores[:, 1] >= medical, groups)


def print_tradeoff(rows: list[dict[str, float | None]], chosen: float) -> None:
    banner("user crisis recall floor trade-off (validation; share redirected, any label)")
    print("  floor  threshold  recall  all none  everyday  hard negatives")
    for r in rows:
        values = (r[k] for k in ("recall", "all_none", "everyday", "hard_negatives"))
        cells = [f"{v:.3f}" if v is not None else "-" for v in values]
        mark = "  <- this run's floor" if r["floor"] == chosen else ""
        print(
            f"  {r['floor']:.2f}   {r['threshold']:.4f}     "
            + "     ".join(f"{c:>5}" for c in cells)
            + mark
        )


def main(args: Args) -> None:
    run = Path(args.run_dir)
    report = json.loads((run / "train_report.json").read_text("utf-8"))
    manifest = json.loads((run / "manifest.json").read_text("utf-8"))
    adapter = report.get("encoder_adapter") or ""
    layers = int(report.get("encoder_layers", 0))
    quantization = str(report.get("encoder_quantization", ""))
    encoder = load_encoder_for(report["encoder"], adapter, layers, quantization)
    cache = EmbeddingCache(encoder, cache_path(run, encoder.name))
    policy = scaffold_policy(
        report["encoder"], report["context_turns"], report["ngram_buckets"], report["ngram_scale"]
    )
    head = LinearHead.load(run / "head.npz", LABELS)
    val = [
        r
        for r in read_jsonl(run / "splits" / "val.jsonl")
        if r["source"] not in report["excluded_sources"]
    ]

    thresholds: dict[str, dict[str, float]] = {}
    tradeoff: list[dict[str, float | None]] = []
    for role in Role:
        rows = [r for r in val if r["role"] == role.value]
        scores = classifier_scores(rows, role.value, cache, head, policy)
        y = targets(rows)
        sources = np.array([r["source"] for r in rows])
        thresholds[role.value] = {}
        for j, label in enumerate(LABELS):
            clean = np.isin(sources, list(CLEAN[(role.value, label)])) & (y[:, j] == 1)
            if args.first_risk_turns and role is Role.USER:
                # later turns of a conversation take their label from it, not from their text
                clean &= np.array([r["source"] != "dialogues" or r["own_label"] for r in rows])
            if label == "crisis":
                floor = args.crisis_recall if role is Role.USER else args.assistant_crisis_recall
                t = recall_threshold(per_message_min(rows, scores[:, j], clean), floor)
            elif label == "risk":
                # caught = redirected (crisis at its threshold, chosen first) or checked in
                floor = args.catch_rate if role is Role.USER else args.assistant_catch_rate
                redirected = scores[:, LABELS.index("crisis")] >= thresholds[role.value]["crisis"]
                caught_score = np.where(redirected, 1.0, scores[:, j])
                t = recall_threshold(per_message_min(rows, caught_score, clean), floor)
            else:
                floor = args.medical_recall
                t = precision_at_recall(scores[:, j], y[:, j], clean, floor, args.medical_precision)
            t = round(t - 1e-4, 4)  # a score equal to the chosen one must still fire
            fired = scores[:, j] >= t
            neg = y[:, j] == 0
            banner(f"role={role.value} label={label}: threshold {t:.4f}")
            print(
                f"  val recall (clean sources, n={int(clean.sum())}): "
                f"{fired[clean].mean():.3f} (floor {floor})"
            )
            print(f"  val recall (all positives, n={int((~neg).sum())}): {fired[~neg].mean():.3f}")
            print(
                f"  val precision: {(~neg[fired]).mean() if fired.any() else 0:.3f}; "
                f"val FPR: {fired[neg].mean():.3f} (n={int(neg.sum())})"
            )
            thresholds[role.value][label] = t
        if role is Role.USER:
            tradeoff = user_floor_tradeoff(rows, scores, y, sources, thresholds["user"]["medical"])
    cache.save()
    print_tradeoff(tradeoff, args.crisis_recall)
    (run / "crisis_floors.json").write_text(json.dumps(tradeoff, indent=2) + "\n", "utf-8")

    final = Policy(
        policy_version=f"{args.version}+{manifest['train_hash'][:8]}",
        labels=LABELS,
        thresholds=thresholds,
        encoder=report["encoder"],
        encoder_adapter=ADAPTER_DIR if adapter else "",
        encoder_layers=layers,
        encoder_quantization=quantization,
        normalization=NORMALIZATION_VERSION,
        context_turns=report["context_turns"],
        ngram_buckets=report["ngram_buckets"],
        ngram_scale=report["ngram_scale"],
        answer_features=True,
        training={
            "excluded_sources": report["excluded_sources"],
            "train_hash": manifest["train_hash"],
            "val_hash": manifest["val_hash"],
            "seed": manifest["seed"],
            "head": "logistic regression per (role, label), class-balanced",
            "encoder_adapter_digest": adapter_digest(adapter) if adapter else "",
            "C": {r: {lab: v["C"] for lab, v in d.items()} for r, d in report["roles"].items()},
            "calibration": {
                "crisis_recall_floor": args.crisis_recall,
                "catch_rate_floor": args.catch_rate,
                "first_risk_turns": args.first_risk_turns,
                "assistant_catch_rate_floor": args.assistant_catch_rate,
                "assistant_crisis_recall_floor": args.assistant_crisis_recall,
                "medical_recall_floor": args.medical_recall,
                "medical_precision": args.medical_precision,
            },
            "rows": {s: d["rows"] for s, d in manifest["splits"].items()},
        },
    )
    out = save_artifact(run / "artifact", head, final, adapter or None)
    print(f"\nwrote {out}/policy.json and head.npz (policy {final.policy_version})")
    if args.install:
        INSTALL_DIR.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(INSTALL_DIR / ADAPTER_DIR, ignore_errors=True)
        save_artifact(INSTALL_DIR, head, final, out / ADAPTER_DIR if adapter else None)
        print(f"installed into {INSTALL_DIR.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main(parse_args(Args))
