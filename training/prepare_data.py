"""Prepare the supervised fine-tuning data: counsel-chat and high-quality AnnoMI -> chat JSONL.

Reads the public data from ``../shared/data`` (never copied into the repo), cleans it, filters
answers with our own output guard, splits by question / transcript so nothing leaks between
splits, and writes ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``stats.json`` to
``--output_dir``. Stage names, counts and a progress bar for the guard filter (the slow step,
minutes on a CPU) go to stderr. Each line:
``{"messages": [{"role", "content"}...], "source", "group"}``; the system prompt is added at
training time from ``companion.prompts`` so that training and service always share it.

    python training/prepare_data.py --output_dir runs/sft-data
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from transformers import HfArgumentParser

csv.field_size_limit(sys.maxsize)


@dataclass
class PrepareArguments:
    data_dir: str = field(default="../shared/data", metadata={"help": "the shared public data"})
    output_dir: str = field(default="runs/sft-data", metadata={"help": "where the JSONL goes"})
    max_answer_chars: int = field(default=900, metadata={"help": "trim answers at a sentence end"})
    min_answer_words: int = field(default=4, metadata={"help": "drop shorter assistant turns"})
    annomi_context_turns: int = field(default=6, metadata={"help": "utterances before the reply"})
    validation_share: float = field(default=0.05, metadata={"help": "share of groups"})
    test_share: float = field(default=0.05, metadata={"help": "share of groups"})
    seed: int = field(default=13, metadata={"help": "split seed"})
    use_guard: bool = field(default=True, metadata={"help": "drop replies our output guard flags"})
    guard_prompts: bool = field(
        default=False, metadata={"help": "also drop examples whose prompt the input guard flags"}
    )
    limit: int | None = field(default=None, metadata={"help": "keep only N examples (tests)"})

    def __post_init__(self) -> None:
        if not 0 <= self.validation_share + self.test_share < 1:
            raise ValueError(
                f"validation_share + test_share must be < 1, got "
                f"{self.validation_share + self.test_share}"
            )


def stage(text: str) -> None:
    """Say what is being done, on stderr (stdout keeps the summary)."""
    print(f"[prepare_data] {text}", file=sys.stderr, flush=True)


# --- cleaning ------------------------------------------------------------------------------
_TAG = re.compile(r"<[^>]+>")
_URL = re.compile(r"(https?://\S+|www\.\S+|\b\S+\.(?:com|org|net)\b\S*)", re.I)
_EMAIL = re.compile(r"\b\S+@\S+\.\w+\b")
_PHONE = re.compile(r"\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b")
# Sentences that advertise the answerer's practice or sign the answer.
_ADVERT = re.compile(
    r"(my (office|practice|website|clinic|book|blog)|call me|contact me|e-?mail me|"
    r"feel free to (call|contact|reach)|free (consultation|session)|schedule an? (appointment|"
    r"session)|i offer|i specialize|i('m| am) (a )?licensed|visit my|sign up)",
    re.I,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def clean(text: str) -> str:
    """Unescape HTML, drop tags, URLs, e-mails, phone numbers; collapse white space."""
    text = html.unescape(text or "")
    text = _TAG.sub(" ", text)
    text = _URL.sub("", text)
    text = _EMAIL.sub("", text)
    text = _PHONE.sub("", text)
    # counsel-chat glues sentences: "worthless.Seriously" -> "worthless. Seriously"
    text = re.sub(r"([a-z][.!?])([A-Z])", r"\1 \2", text)
    return re.sub(r"\s+", " ", text).strip()


def drop_adverts(text: str) -> tuple[str, bool]:
    """Remove sentences that advertise a practice; True if any was removed."""
    sentences = _SENTENCE.split(text)
    kept = [s for s in sentences if not _ADVERT.search(s)]
    return " ".join(kept).strip(), len(kept) != len(sentences)


def trim(text: str, max_chars: int) -> str:
    """Cut at the last sentence end before ``max_chars``."""
    if len(text) <= max_chars:
        return text
    out = ""
    for sentence in _SENTENCE.split(text):
        if len(out) + len(sentence) + 1 > max_chars:
            break
        out = f"{out} {sentence}".strip()
    return out or text[:max_chars].rsplit(" ", 1)[0]


def split_of(group: str, seed: int, val: float, test: float) -> str:
    """Deterministic split by group id, so one question / transcript is in one split only."""
    h = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test else "validation" if h < test + val else "train"


# --- sources -------------------------------------------------------------------------------
def counsel_chat(args: PrepareArguments, stats: Counter[str]) -> list[dict]:
    path = Path(args.data_dir) / "counsel-chat" / "data" / "20200325_counsel_chat.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    stats["counsel_chat_rows"] = len(rows)
    out = []
    for row in rows:
        title, body, answer = (
            clean(row.get(k) or "") for k in ("questionTitle", "questionText", "answerText")
        )
        if not answer or not (title or body):
            stats["dropped_empty"] += 1
            continue
        question = body if title and title.rstrip("?") in body else f"{title} {body}".strip()
        answer, advert = drop_adverts(answer)
        if advert:
            stats["advert_sentences_removed_from_answers"] += 1
        answer = trim(answer, args.max_answer_chars)
        if len(answer.split()) < args.min_answer_words:
            stats["dropped_short"] += 1
            continue
        out.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "source": "counsel-chat",
                "group": f"cc-{row['questionID']}",
            }
        )
    return out


def annomi(args: PrepareArguments, stats: Counter[str]) -> list[dict]:
    path = Path(args.data_dir) / "AnnoMI" / "AnnoMI-simple.csv"
    by_transcript: dict[str, list[dict]] = defaultdict(list)
    for row in csv.DictReader(path.open(encoding="utf-8")):
        if row["mi_quality"] == "high":
            by_transcript[row["transcript_id"]].append(row)
    stats["annomi_high_quality_transcripts"] = len(by_transcript)
    out = []
    for tid, rows in by_transcript.items():
        rows.sort(key=lambda r: int(r["utterance_id"]))
        turns: list[dict] = []  # consecutive utterances of one speaker merged
        for r in rows:
            role = "assistant" if r["interlocutor"] == "therapist" else "user"
            text = clean(r["utterance_text"])
            if not text:
                continue
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += " " + text
            else:
                turns.append({"role": role, "content": text})
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant" or i == 0:
                continue
            if len(turn["content"].split()) < args.min_answer_words:
                stats["dropped_short"] += 1
                continue
            window = turns[max(0, i - args.annomi_context_turns) : i]
            while window and window[0]["role"] != "user":  # the template wants user first
                window = window[1:]
            if not window:
                continue
            reply = {"role": "assistant", "content": trim(turn["content"], args.max_answer_chars)}
            out.append(
                {
                    "messages": [dict(t) for t in window] + [reply],
                    "source": "annomi",
                    "group": f"annomi-{tid}",
                }
            )
    return out


def dedupe(examples: list[dict], stats: Counter[str]) -> list[dict]:
    seen: set[str] = set()
    out = []
    for ex in examples:
        key = json.dumps(ex["messages"][-2:], sort_keys=True).lower()
        if key in seen:
            stats["dropped_duplicate"] += 1
            continue
        seen.add(key)
        out.append(ex)
    return out


def guard_filter(
    examples: list[dict], stats: Counter[str], prompts: bool, chunk: int = 256
) -> list[dict]:
    """Drop examples whose reply our output guard flags (medication / diagnosis opinions,
    self-harm content): the service would replace such a reply, so the model should not learn
    it. With ``prompts``, also drop examples whose prompt the input guard would redirect."""
    from companion.safety import ClassifyItem, SafetyClassifier
    from companion.types import Category, Role

    stage("loading the output guard")
    clf = SafetyClassifier.from_defaults()
    stage(
        f"guard policy {clf.policy_version}: checking {len(examples)} replies"
        + (" and their prompts" if prompts else "")
    )
    items = []
    for ex in examples:
        user_turns = [m["content"] for m in ex["messages"] if m["role"] == "user"]
        items.append(ClassifyItem(ex["messages"][-1]["content"], Role.ASSISTANT))
        if prompts:
            items.append(ClassifyItem(user_turns[-1], Role.USER, tuple(user_turns[-4:-1])))
    step = 2 if prompts else 1
    verdicts = []
    with tqdm(total=len(examples), desc="guard filter", unit="example", file=sys.stderr) as bar:
        for start in range(0, len(items), chunk * step):  # chunks: progress, same verdicts
            part = items[start : start + chunk * step]
            verdicts += clf.classify_batch(part)
            bar.update(len(part) // step)
    out = []
    for i, ex in enumerate(examples):
        reply_v = verdicts[step * i]
        prompt_v = verdicts[step * i + 1] if prompts else reply_v
        if reply_v.category is not Category.NONE:
            stats[f"dropped_reply_flagged_{reply_v.category.value}"] += 1
        elif prompts and prompt_v.category is not Category.NONE:
            stats[f"dropped_prompt_flagged_{prompt_v.category.value}"] += 1
        else:
            out.append(ex)
    stats["guard_policy_version"] = clf.policy_version  # type: ignore[assignment]
    return out


def main() -> None:
    (args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses()
    stats: Counter[str] = Counter()
    stage(f"reading counsel-chat from {args.data_dir}")
    cc = counsel_chat(args, stats)
    stage(f"counsel-chat: {stats['counsel_chat_rows']} rows -> {len(cc)} examples")
    stage(f"reading AnnoMI from {args.data_dir}")
    mi = annomi(args, stats)
    stage(
        f"AnnoMI: {stats['annomi_high_quality_transcripts']} high-quality transcripts -> "
        f"{len(mi)} examples"
    )
    examples = cc + mi
    print(f"read {len(examples)} candidate examples")
    examples = dedupe(examples, stats)
    stage(f"{stats['dropped_duplicate']} duplicates dropped, {len(examples)} left")
    if args.limit is not None:
        examples = examples[: args.limit]
    if args.use_guard:
        before = len(examples)
        examples = guard_filter(examples, stats, args.guard_prompts)
        print(f"guard filter removed {before - len(examples)} of {before}")
    stage(f"splitting {len(examples)} examples by question / transcript")
    splits: dict[str, list[dict]] = defaultdict(list)
    for ex in examples:
        splits[split_of(ex["group"], args.seed, args.validation_share, args.test_share)].append(ex)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"args": vars(args), "filters": dict(stats), "splits": {}}
    for name in ("train", "validation", "test"):
        rows = splits[name]
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for ex in rows:
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
        summary["splits"][name] = {  # type: ignore[index]
            "examples": len(rows),
            "groups": len({ex["group"] for ex in rows}),
            "by_source": dict(Counter(ex["source"] for ex in rows)),
            "mean_reply_chars": round(
                sum(len(ex["messages"][-1]["content"]) for ex in rows) / max(1, len(rows)), 1
            ),
        }
    (out / "stats.json").write_text(json.dumps(summary, indent=2) + "\n")
    stage(f"wrote {out}/{{train,validation,test}}.jsonl and stats.json")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
