"""Step 1 of 5: build train / val / test rows for the safety classifier.

Reads the hand-written seed set (``safety/data/``) and the public sets under ``../shared/data``
(never ``eval-only/``, which only ``evaluate.py`` reads), relabels them into
``crisis`` / ``medical`` / ``none`` for the ``user`` and ``assistant`` roles (the mapping is in
``safety/CLASSIFIER_CARD.md``), splits them with a fixed seed and writes
``{out_dir}/splits/{train,val,test}.jsonl`` plus ``manifest.json``. Nothing is copied into the
repository: outputs go to the ignored ``runs/`` folder.

Usage:
    python safety/prepare.py [--data_dir ../shared/data] [--out_dir runs/safety] [--seed 13]
"""

from __future__ import annotations

import ast
import csv
import json
import random
import re
import sys
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from _common import (
    DEFAULT_DATA_DIR,
    DEFAULT_RUN_DIR,
    SEED_DIR,
    banner,
    data_hash,
    die,
    parse_args,
    read_jsonl,
    write_jsonl,
)
from triage_data import CONTEXT_TURNS, check_in_answers, dialogues, relabel_levels

from companion.safety.topics import raises_risk_topic

# Relabelling lexicons: used only to decide which public rows are unambiguous enough to keep.
CRISIS_RE = re.compile(
    r"suicid|kill(ing)? (my|him|her)self|end(ing)? (my life|it all)|want(ed)? to die|"
    r"self[- ]?harm|cut(ting)? myself|overdos|hang(ing)? myself|unalive|\bkms\b|"
    r"(don'?t|do not) want to (live|be alive)|better off dead|take my (own )?life",
    re.IGNORECASE,
)
MEDICAL_RE = re.compile(
    r"medic|\bmeds?\b|\bmg\b|dosage|\bdose|prescri|antidepress|\bssri|diagnos|\bpills?\b|"
    r"zoloft|prozac|xanax|lexapro|sertraline|fluoxetine|wellbutrin|adderall|lithium|"
    r"seroquel|abilify|klonopin|valium|ativan|bipolar|adhd|do i have",
    re.IGNORECASE,
)
SOURCE_WEIGHT = {
    "handwritten": 1.0,
    "windows": 1.0,
    "conversations": 3.0,
    "diasafety": 0.5,
    "meqsum": 0.5,
    "counselchat": 0.5,
    "annomi": 1.0,  # lexicon-filtered ordinary talk: clean "none" labels
    "cssrs": 0.3,
    "dialogues": 1.0,  # whole support-seeking conversations, labelled per turn (three levels)
    "check_in_answers": 1.0,
    "style": 1.0,  # user turns of the companion's style dialogues: benign chat, train only
}


# Seed files; each is split 60/20/20 per subtype, so adding a file (or a subtype) leaves the
# splits of the others as they were. ``everyday`` holds ordinary messages (plans, requests,
# routines, mild feelings), reported as its own held-out source.
SEED_FILES = (
    "crisis",
    "medical",
    "hard_negatives",
    "everyday",
    "assistant_unsafe",
    "assistant_safe",
)
# Words that make an AnnoMI client turn too close to our labels to call it "none" unread:
# violence and death (danger to others, abuse), on top of the crisis and medication lexicons.
ANNOMI_DROP_RE = re.compile(
    r"\b(hit|hits|hitting|beat|beating|hurt|hurting|kill|killed|knife|gun|fight|fighting|"
    r"abus\w*|die|died|dying|dead|death|rape|threat\w*|weapon|assault\w*)\b",
    re.IGNORECASE,
)

MAX_CHARS = 600  # long public posts are cut to about 128 tokens: the signal is early, CPU is scarce


@dataclass
class Args:
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "shared public data"})
    seed_dir: str = field(default=SEED_DIR, metadata={"help": "hand-written seed set"})
    style_dir: str = field(
        default="",
        metadata={
            "help": "style dialogues whose user turns train as none, e.g. training/data/style "
            "(rounds 12-14; '': left out, as policy 3.4 was built)"
        },
    )
    out_dir: str = field(default=DEFAULT_RUN_DIR, metadata={"help": "run folder (ignored)"})
    seed: int = field(default=13, metadata={"help": "split and sampling seed"})
    max_per_source: int = field(default=0, metadata={"help": "cap rows per source (0: none)"})
    cssrs_max_posts: int = field(default=3, metadata={"help": "posts kept per C-SSRS user"})
    dia_other_max: int = field(default=800, metadata={"help": "DiaSafety off-topic contexts"})
    annomi_max: int = field(default=800, metadata={"help": "AnnoMI client turns (train)"})

    def __post_init__(self) -> None:
        if not Path(self.data_dir).is_dir():
            raise ValueError(f"data_dir={self.data_dir!r} is not a folder")


def row(text: str, label: str, role: str, source: str, **extra: Any) -> dict[str, Any]:
    return {
        "text": text.strip(),
        "label": label,
        "role": role,
        "source": source,
        "weight": SOURCE_WEIGHT[source],
        **extra,
    }


def split_items(items: list[Any], seed: int, key: Any = None) -> dict[str, list[Any]]:
    """60 / 20 / 20 per stratum (``key(item)``), shuffled with ``seed``."""
    strata: dict[Any, list[Any]] = defaultdict(list)
    for it in items:
        strata[key(it) if key else 0].append(it)
    out: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
    for name in sorted(strata, key=str):
        group = strata[name]
        random.Random(f"{seed}-{name}").shuffle(group)
        n_val = n_test = round(len(group) * 0.2)
        out["test"] += group[:n_test]
        out["val"] += group[n_test : n_test + n_val]
        out["train"] += group[n_test + n_val :]
    return out


def handwritten(seed_dir: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """The seed files, split per subtype; crisis rows relabelled into three levels
    (``relabel_levels.jsonl``) take their new label, in the split they always had."""
    levels = relabel_levels(seed_dir)
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for name in SEED_FILES:
        rows = [
            row(
                r["text"],
                levels.get(r["text"], r["label"]) if r["label"] == "crisis" else r["label"],
                r["role"],
                "handwritten",
                subtype=r["subtype"],
                file=name,
            )
            for r in read_jsonl(seed_dir / f"{name}.jsonl")
        ]
        for split, part in split_items(rows, seed, key=lambda r: r["subtype"]).items():
            out[split] += part
    return out


def conversation_splits(convs: list[dict[str, Any]], seed: int) -> dict[str, list[Any]]:
    """60 / 20 / 20 per kind and per batch a conversation was written in (``set``; the first
    batch has none), so adding a batch leaves the splits of the earlier ones as they were."""
    return split_items(convs, seed, key=lambda c: c["kind"] + c.get("set", ""))


def conversations(seed_dir: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    convs = read_jsonl(seed_dir / "conversations.jsonl")
    out: dict[str, list[dict[str, Any]]] = {}
    for split, part in conversation_splits(convs, seed).items():
        rows = []
        for c in part:
            turns = c["turns"]
            rows.append(
                row(
                    turns[-1],
                    c["label"],
                    "user",
                    "conversations",
                    context=turns[:-1],
                    subtype=c["kind"],
                )
            )
            if c["kind"] == "recovered" and len(turns) > 2:
                # The recovery statement after the crisis turn is not a new crisis either.
                rows.append(
                    row(
                        turns[1],
                        "none",
                        "user",
                        "conversations",
                        context=turns[:1],
                        subtype="recovered_middle",
                    )
                )
        out[split] = rows
    return out


def windows(rows: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Synthetic multi-turn rows from one split's hand-written single messages."""
    user = [r for r in rows if r["role"] == "user" and r["source"] == "handwritten"]
    crisis = [r["text"] for r in user if r["label"] == "crisis"]
    check_in = [r["text"] for r in user if r["label"] == "check_in"]
    medical = [r["text"] for r in user if r["label"] == "medical"]
    benign = [r["text"] for r in user if r["label"] == "none"]
    if not (crisis and medical and benign):
        return []

    def ctx(pool: list[str], k: int | None = None) -> list[str]:
        return rng.sample(pool, min(len(pool), k or rng.randint(1, 3)))

    out = []
    for t in crisis:  # a crisis message stays a crisis whatever came before
        out.append(row(t, "crisis", "user", "windows", context=ctx(benign), subtype="crisis_last"))
    for t in check_in:
        out.append(
            row(t, "check_in", "user", "windows", context=ctx(benign), subtype="check_in_last")
        )
    for t in medical:
        out.append(
            row(t, "medical", "user", "windows", context=ctx(benign), subtype="medical_last")
        )
    for t in rng.sample(benign, len(benign) // 2):
        out.append(row(t, "none", "user", "windows", context=ctx(benign), subtype="benign"))
    for t in rng.sample(benign, len(benign) // 2):
        # One old crisis turn must not re-trigger on every later benign turn.
        context = ctx(benign, rng.randint(0, 2))
        context.insert(rng.randint(0, len(context)), rng.choice(crisis))
        out.append(row(t, "none", "user", "windows", context=context, subtype="old_crisis"))
    for t in rng.sample(benign, len(benign) // 4):
        out.append(
            row(t, "none", "user", "windows", context=[rng.choice(medical)], subtype="old_medical")
        )
    return out


def diasafety(data_dir: Path, args: Args, rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for split in ("train", "val", "test"):  # each later split drops contexts seen earlier
        records = json.loads((data_dir / f"DiaSafety_dataset/{split}.json").read_text("utf-8"))
        rows, other = [], []
        contexts: dict[str, str] = {}
        for rec in records:
            contexts.setdefault(rec["context"], rec["category"])
        for text, cat in contexts.items():
            if text in seen:
                continue
            if cat == "Unauthorized Expertise":
                rows.append(
                    row(text[:MAX_CHARS], "medical", "user", "diasafety", subtype="ue_context")
                )
            elif cat == "Risk Ignorance":
                if CRISIS_RE.search(text):
                    rows.append(row(text, "crisis", "user", "diasafety", subtype="ri_context"))
            elif not CRISIS_RE.search(text) and not MEDICAL_RE.search(text):
                other.append(row(text, "none", "user", "diasafety", subtype="other_context"))
        seen.update(contexts)
        rng.shuffle(other)
        rows += other[: args.dia_other_max if split == "train" else args.dia_other_max // 4]
        for rec in records:
            if rec["context"] not in contexts or rec["context"] in seen - set(contexts):
                continue
            if rec["category"] == "Unauthorized Expertise":
                label = "medical" if rec["label"] == "Unsafe" else "none"
                rows.append(
                    row(
                        rec["response"],
                        label,
                        "assistant",
                        "diasafety",
                        subtype=f"ue_response_{rec['label'].lower()}",
                    )
                )
            elif (
                rec["category"] == "Risk Ignorance"
                and rec["label"] == "Safe"
                and rng.random() < 0.3
            ):
                rows.append(
                    row(
                        rec["response"],
                        "none",
                        "assistant",
                        "diasafety",
                        subtype="ri_response_safe",
                    )
                )
        out[split] = rows
    return out


def cssrs(data_dir: Path, args: Args) -> dict[str, list[dict[str, Any]]]:
    csv.field_size_limit(sys.maxsize)
    mapping = {
        "Ideation": "crisis",
        "Behavior": "crisis",
        "Attempt": "crisis",
        "Supportive": "none",
        "Indicator": "indicator",
    }
    with open(data_dir / "reddit-cssrs/500_Reddit_users_posts_labels.csv", encoding="utf-8") as f:
        users = list(csv.DictReader(f))
    parts = split_items(users, args.seed, key=lambda u: u["Label"])
    out: dict[str, list[dict[str, Any]]] = {}
    for split, part in parts.items():
        rows = []
        for u in part:
            label = mapping[u["Label"]]
            if label == "indicator" and split != "test":
                continue  # at risk but no ideation: too ambiguous to train or calibrate on
            for post in parse_posts(u["Post"])[: args.cssrs_max_posts]:
                rows.append(
                    row(
                        post[:MAX_CHARS],
                        label,
                        "user",
                        "cssrs",
                        group=u["User"],
                        subtype=u["Label"],
                    )
                )
        out[split] = rows
    return out


def parse_posts(cell: str) -> list[str]:
    """The ``Post`` cell is a Python list literal; 28 are cut at Excel's cell limit."""
    try:
        posts = ast.literal_eval(cell)
        if isinstance(posts, list):
            return [str(p) for p in posts if str(p).strip()]
    except (ValueError, SyntaxError):
        pass
    body = cell.strip().lstrip("[")
    return [
        p.strip(" '\"]")
        for p in re.split(r"',\s*'|\",\s*\"|',\s*\"|\",\s*'", body)
        if p.strip(" '\"]")
    ]


def meqsum(data_dir: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    questions = read_xlsx_column(
        data_dir / "MeQSum/MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx", "CHQ"
    )
    rows = [row(q[:MAX_CHARS], "medical", "user", "meqsum", subtype="chq") for q in questions if q]
    return split_items(rows, seed)


def read_xlsx_column(path: Path, header: str) -> list[str]:
    """One column of the first sheet, read with the standard library (no openpyxl)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as z:
        shared = [
            "".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t"))
            for si in ElementTree.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", ns)
        ]
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
    table = []
    for r in sheet.iter(f"{{{ns['m']}}}row"):
        cells = {}
        for c in r.findall("m:c", ns):
            v = c.find("m:v", ns)
            if v is None or v.text is None:
                continue
            col = re.sub(r"\d", "", c.get("r", ""))
            cells[col] = shared[int(v.text)] if c.get("t") == "s" else v.text
        table.append(cells)
    col = next(k for k, v in table[0].items() if v.strip() == header)
    return [r.get(col, "").strip() for r in table[1:]]


def counselchat(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    with open(data_dir / "counsel-chat/data/20200325_counsel_chat.csv", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    for rec in records:
        qid = rec["questionID"]
        text = (rec["questionText"] or rec["questionTitle"] or "").strip()
        if not text:
            continue
        answer = (rec["answerText"] or "").strip()
        if answer and not MEDICAL_RE.search(answer) and rec["split"] in out:
            # Therapist answers: supportive replies, including ones that mention suicide.
            # Answers that touch on medication or diagnosis are left out (policy-ambiguous).
            out[rec["split"]].append(
                row(
                    answer[:MAX_CHARS],
                    "none",
                    "assistant",
                    "counselchat",
                    subtype="answer",
                    group=qid,
                )
            )
        if qid in seen:
            continue
        seen.add(qid)
        if CRISIS_RE.search(text) or MEDICAL_RE.search(text) or rec["topic"] == "self-harm":
            continue  # not unambiguously "none": left out rather than mislabelled
        out[rec["split"]].append(
            row(text[:MAX_CHARS], "none", "user", "counselchat", subtype=rec["topic"], group=qid)
        )
    return out


def annomi(data_dir: Path, args: Args, rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Client turns of motivational-interviewing transcripts: ordinary spoken talk about
    drinking, smoking, exercise, work and family, as user-side negatives. Split by transcript;
    turns under 6 words or matching the crisis, medication or violence lexicons are dropped."""
    with open(data_dir / "AnnoMI/AnnoMI-simple.csv", encoding="utf-8") as f:
        records = [r for r in csv.DictReader(f) if r["interlocutor"] == "client"]
    by_transcript: dict[str, list[str]] = defaultdict(list)
    for r in records:
        text = " ".join(r["utterance_text"].split()).strip(" -")
        if len(text.split()) < 6:
            continue
        if CRISIS_RE.search(text) or MEDICAL_RE.search(text) or ANNOMI_DROP_RE.search(text):
            continue
        by_transcript[r["transcript_id"]].append(text)
    out: dict[str, list[dict[str, Any]]] = {}
    for split, ids in split_items(sorted(by_transcript), args.seed).items():
        rows = [
            row(t[:MAX_CHARS], "none", "user", "annomi", subtype="client", group=tid)
            for tid in ids
            for t in by_transcript[tid]
        ]
        rng.shuffle(rows)
        out[split] = rows[: args.annomi_max if split == "train" else args.annomi_max // 2]
    return out


def style_turns(style_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The user turns of the companion's own style dialogues (``training/data/style/``,
    written for the reply model: ordinary support-seeking chat, no risk topics by its guide) as
    ``none`` rows with the user turns before them, **train only**, so validation and test stay
    the rows earlier policies were measured on."""
    rows = []
    for path in sorted(style_dir.glob("*.jsonl")):
        for d in read_jsonl(path):
            users = [m["content"] for m in d["messages"] if m["role"] == "user"]
            rows += [
                row(
                    text,
                    "none",
                    "user",
                    "style",
                    context=users[max(0, i - CONTEXT_TURNS) : i],
                    subtype=f"benign/style/{d.get('topic', '')}",
                    conversation=d["id"],
                    turn=i,
                )
                for i, text in enumerate(users)
            ]
    return {"train": rows, "val": [], "test": []}


def main(args: Args) -> None:
    data_dir, seed_dir, out_dir = Path(args.data_dir), Path(args.seed_dir), Path(args.out_dir)
    if "eval-only" in data_dir.parts:
        die("data_dir points into eval-only/: those sets are never trained on")
    rng = random.Random(args.seed)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}

    banner("sources")
    per_source = {
        "handwritten": handwritten(seed_dir, args.seed),
        "conversations": conversations(seed_dir, args.seed),
        "diasafety": diasafety(data_dir / "DiaSafety", args, rng),
        "cssrs": cssrs(data_dir, args),
        "meqsum": meqsum(data_dir, args.seed),
        "counselchat": counselchat(data_dir),
        "annomi": annomi(data_dir, args, random.Random(f"{args.seed}-annomi")),
        "dialogues": dialogues(seed_dir, args.seed, row, split_items),
        "check_in_answers": check_in_answers(seed_dir, args.seed, row, split_items),
    }
    if args.style_dir:
        per_source["style"] = style_turns(Path(args.style_dir))
    for name, parts in per_source.items():
        for split, rows in parts.items():
            if args.max_per_source:
                rows = stratified_cap(rows, args.max_per_source, rng)
            splits[split] += rows
        sizes = {s: len(r) for s, r in parts.items()}
        print(f"  {name:14s} {sizes}")
    for split in splits:
        synthetic = windows(splits[split], random.Random(f"{args.seed}-windows-{split}"))
        splits[split] += synthetic
        for r in splits[split]:  # generated text never raises risk topics, whatever its tone
            if r["role"] == "assistant" and r["label"] == "none" and raises_risk_topic(r["text"]):
                r["label"] = "check_in"
    print(f"  {'windows':14s} synthetic multi-turn rows built per split from hand-written rows")

    banner("splits (rows by source / role / label)")
    manifest: dict[str, Any] = {"seed": args.seed, "data_dir": str(data_dir), "splits": {}}
    for split, rows in splits.items():
        n = write_jsonl(out_dir / "splits" / f"{split}.jsonl", rows)
        counts = Counter(f"{r['source']}/{r['role']}/{r['label']}" for r in rows)
        manifest["splits"][split] = {"rows": n, "counts": dict(sorted(counts.items()))}
        print(f"  {split}: {n} rows")
        for k, v in sorted(counts.items()):
            print(f"    {k:40s} {v}")
    manifest["train_hash"] = data_hash(splits["train"])
    manifest["val_hash"] = data_hash(splits["val"])
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    print(
        f"\nwrote {out_dir}/splits/*.jsonl and manifest.json (train hash {manifest['train_hash']})"
    )


def stratified_cap(
    rows: list[dict[str, Any]], cap: int, rng: random.Random
) -> list[dict[str, Any]]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["role"], r["label"])].append(r)
    out = []
    for key in sorted(by):
        group = by[key][:]
        rng.shuffle(group)
        out += group[:cap]
    return out


if __name__ == "__main__":
    main(parse_args(Args))
