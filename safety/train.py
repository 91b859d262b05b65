"""Step 3 of 5: fit the multi-label logistic-regression head on the sentence embeddings.

Reads ``{run_dir}/splits/{train,val}.jsonl`` from ``prepare.py`` and the encoder adapter from
``finetune_encoder.py`` (``{run_dir}/encoder_adapter`` when it exists; ``--encoder_adapter none``
for the frozen encoder), embeds every row exactly as the runtime classifier does
(normalisation, newest + window for user messages), fits one
logistic regression per (role, label) and picks the regularisation ``C`` by validation AUPRC.
Writes ``{run_dir}/head.npz`` and ``train_report.json``. The validation split picks ``C`` and,
in ``calibrate.py``, the thresholds; no test row is read here.

Usage:
    python safety/train.py [--run_dir runs/safety] [--encoder embedded] [--seed 13]
        [--quantization int8-dynamic]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_RUN_DIR,
    LABELS,
    EmbeddingCache,
    banner,
    cache_path,
    data_hash,
    features,
    load_encoder_for,
    parse_args,
    read_jsonl,
    resolve_adapter,
    targets,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from companion.models.encoder import EMBEDDED_ENCODER
from companion.safety import LinearHead, Policy
from companion.types import Role


@dataclass
class Args:
    run_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "folder from prepare.py"})
    encoder: str = field(default="embedded", metadata={"help": "'embedded' or an ST path/id"})
    encoder_adapter: str = field(
        default="auto",
        metadata={"help": "'auto' ({run_dir}/encoder_adapter if any), 'none' or a folder"},
    )
    encoder_layers: int = field(
        default=-1,
        metadata={"help": "-1: as the adapter was trained (encoder_report.json); 0: all; N"},
    )
    quantization: str = field(
        default="", metadata={"help": "'int8-dynamic' or '' (fp32) for the guard's encoder"}
    )
    seed: int = field(default=13, metadata={"help": "solver seed"})
    c_grid: str = field(default="0.25,1,4,16", metadata={"help": "C values to try"})
    context_turns: int = field(default=3, metadata={"help": "earlier user turns in the window"})
    ngram_buckets: int = field(default=2**14, metadata={"help": "hashed n-gram buckets (0: off)"})
    ngram_scale: float = field(default=2.0, metadata={"help": "weight of the n-gram block"})
    exclude: str = field(
        default="cssrs", metadata={"help": "sources not trained on (comma list); see the card"}
    )


def scaffold_policy(
    encoder_name: str, context_turns: int, ngram_buckets: int = 0, ngram_scale: float = 2.0
) -> Policy:
    """A policy with placeholder thresholds: enough to build features like the runtime."""
    placeholder = {lab: 0.5 for lab in LABELS}
    return Policy(
        policy_version="untrained",
        labels=LABELS,
        thresholds={"user": placeholder, "assistant": placeholder},
        encoder=encoder_name,
        context_turns=context_turns,
        ngram_buckets=ngram_buckets,
        ngram_scale=ngram_scale,
        answer_features=True,
    )


def fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, seed: int) -> LogisticRegression:
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
    clf.fit(x, y, sample_weight=w)
    return clf


def main(args: Args) -> None:
    run = Path(args.run_dir)
    adapter = resolve_adapter(args.encoder_adapter, run)
    print(f"encoder: {args.encoder}; fine-tuned adapter: {adapter or 'none (frozen encoder)'}")
    layers = args.encoder_layers
    if layers < 0:
        tuned = run / "encoder_report.json"
        layers = json.loads(tuned.read_text("utf-8")).get("layers", 0) if adapter else 0
    print(f"encoder layers: {layers or 'all'}; quantization: {args.quantization or 'none (fp32)'}")
    encoder = load_encoder_for(args.encoder, adapter, layers, args.quantization)
    name = EMBEDDED_ENCODER if args.encoder == "embedded" else args.encoder
    cache = EmbeddingCache(encoder, cache_path(run, encoder.name))
    policy = scaffold_policy(name, args.context_turns, args.ngram_buckets, args.ngram_scale)
    grid = [float(c) for c in args.c_grid.split(",")]
    excluded = {s for s in args.exclude.split(",") if s}
    rows = {
        s: [r for r in read_jsonl(run / "splits" / f"{s}.jsonl") if r["source"] not in excluded]
        for s in ("train", "val")
    }
    print(f"sources left out of training and model selection: {sorted(excluded) or 'none'}")

    weights: dict[Role, tuple[np.ndarray, np.ndarray]] = {}
    report: dict[str, object] = {
        "encoder": name,
        "encoder_adapter": adapter,
        "encoder_layers": layers,
        "encoder_quantization": args.quantization,
        "seed": args.seed,
        "roles": {},
    }
    for role in Role:
        banner(f"role={role.value}: embedding")
        parts = {s: [r for r in rows[s] if r["role"] == role.value] for s in rows}
        xs = {s: features(p, role.value, cache, policy) for s, p in parts.items()}
        ys = {s: targets(p) for s, p in parts.items()}
        w_train = np.array([r["weight"] for r in parts["train"]], dtype=np.float32)
        cache.save()
        print(f"  features: train {xs['train'].shape}, val {xs['val'].shape}")
        w_mat = np.zeros((xs["train"].shape[1], len(LABELS)), dtype=np.float32)
        b_vec = np.zeros(len(LABELS), dtype=np.float32)
        role_report = {}
        for j, label in enumerate(LABELS):
            y_tr, y_va = ys["train"][:, j], ys["val"][:, j]
            banner(f"role={role.value} label={label}: {int(y_tr.sum())} positives in train")
            best = (-1.0, grid[0], None)
            for c in grid:
                model = fit(xs["train"], y_tr, w_train, c, args.seed)
                ap = average_precision_score(y_va, model.predict_proba(xs["val"])[:, 1])
                print(f"  C={c:<6g} val AUPRC={ap:.4f}")
                if ap > best[0]:
                    best = (ap, c, model)
            ap, c, model = best
            assert model is not None
            print(f"  chose C={c:g} (val AUPRC {ap:.4f})")
            w_mat[:, j] = model.coef_[0]
            b_vec[j] = model.intercept_[0]
            role_report[label] = {
                "C": c,
                "val_auprc": round(float(ap), 4),
                "train_pos": int(y_tr.sum()),
                "train_rows": len(y_tr),
            }
        weights[role] = (w_mat, b_vec)
        report["roles"][role.value] = role_report  # type: ignore[index]

    head = LinearHead(weights, LABELS)
    head.save(run / "head.npz")
    report["train_hash"] = data_hash(rows["train"])
    report["context_turns"] = args.context_turns
    report["ngram_buckets"] = args.ngram_buckets
    report["ngram_scale"] = args.ngram_scale
    report["excluded_sources"] = sorted(excluded)
    (run / "train_report.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"\nwrote {run / 'head.npz'} and train_report.json")


if __name__ == "__main__":
    main(parse_args(Args))
