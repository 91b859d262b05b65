"""Prepare the supervised fine-tuning data: our style dialogues, AnnoMI and counsel-chat -> JSONL.

Three sources, in the shape of the product (``training/STYLE_GUIDE.md``):
- the style dialogues in ``training/data/style/`` (written for this project, Apache-2.0), every
  assistant turn trained;
- the reflections and open questions of the high-quality AnnoMI transcripts (its annotations:
  ``main_therapist_behaviour`` reflection, or question with a majority ``open`` subtype), each
  with the utterances before it;
- counsel-chat as trimmed first paragraphs only (its answers are advice monologues): one answer
  per question, the most upvoted, cut at a sentence end within ``counsel_chat_max_words``.

Reads the public data from ``../shared/data`` (never copied into the repo), cleans it, filters
replies with our own output guard (counts per source in ``stats.json``), splits by dialogue /
question / transcript so nothing leaks between splits, and writes ``train.jsonl``,
``validation.jsonl``, ``test.jsonl`` and ``stats.json`` to ``--output_dir``. Stage names,
counts and a progress bar for the guard filter (the slow step, minutes on a CPU) go to stderr.
Each line: ``{"messages": [{"role", "content"}...], "source", "group"}`` plus ``"train_on":
"last"`` where only the last reply is a target (``"topic"`` for style dialogues); the system
prompt is added at
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
    style_dir: str = field(
        default=str(Path(__file__).resolve().parent / "data" / "style"),
        metadata={"help": "the style dialogues (JSONL files)"},
    )
    max_answer_chars: int = field(default=900, metadata={"help": "trim answers at a sentence end"})
    counsel_chat_max_words: int = field(
        default=90, metadata={"help": "counsel-chat answers: first paragraph, cut to this"}
    )
    min_answer_words: int = field(default=4, metadata={"help": "drop shorter assistant turns"})
    annomi_context_turns: int = field(default=3, metadata={"help": "turns before the reply"})
    annomi_max_examples: int | None = field(
        default=800, metadata={"help": "a seeded sample of AnnoMI replies (CPU budget)"}
    )
    counsel_chat_max_examples: int | None = field(
        default=400, metadata={"help": "a seeded sample of counsel-chat answers (CPU budget)"}
    )
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


def trim_words(text: str, max_words: int) -> str:
    """The leading whole sentences of ``text`` that fit in ``max_words``; empty when even the
    first is longer (a reply cut mid-sentence would teach unfinished endings)."""
    out: list[str] = []
    for sentence in _SENTENCE.split(text):
        if len(" ".join([*out, sentence]).split()) > max_words:
            break
        out.append(sentence)
    return " ".join(out)


def _upvotes(row: dict) -> int:
    try:
        return int(row.get("upvotes") or 0)
    except ValueError:
        return 0


def sample(examples: list[dict], limit: int | None, seed: int) -> list[dict]:
    """At most ``limit`` examples, a deterministic sample (by hash, so adding a source does not
    change another's sample), in their original order."""
    if limit is None or len(examples) <= limit:
        return examples
    key = [
        hashlib.sha256(f"{seed}:{json.dumps(ex['messages'])}".encode()).hexdigest()
        for ex in examples
    ]
    keep = set(sorted(range(len(examples)), key=key.__getitem__)[:limit])
    return [ex for i, ex in enumerate(examples) if i in keep]


def split_of(group: str, seed: int, val: float, test: float) -> str:
    """Deterministic split by group id, so one question / transcript is in one split only."""
    h = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test else "validation" if h < test + val else "train"


# --- sources -------------------------------------------------------------------------------
def counsel_chat(args: PrepareArguments, stats: Counter[str]) -> list[dict]:
    path = Path(args.data_dir) / "counsel-chat" / "data" / "20200325_counsel_chat.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    stats["counsel_chat_rows"] = len(rows)
    best: dict[str, dict] = {}  # the most upvoted answer of each question
    for row in rows:
        kept = best.get(row["questionID"])
        if kept is None or _upvotes(row) > _upvotes(kept):
            best[row["questionID"]] = row
    stats["counsel_chat_questions"] = len(best)
    out = []
    for row in best.values():
        first = re.split(r"\n\s*\n", (row.get("answerText") or "").strip())[0]
        title, body, answer = (
            clean(text)
            for text in (row.get("questionTitle") or "", row.get("questionText") or "", first)
        )
        if not answer or not (title or body):
            stats["dropped_empty"] += 1
            continue
        question = body if title and title.rstrip("?") in body else f"{title} {body}".strip()
        answer, advert = drop_adverts(answer)
        if advert:
            stats["advert_sentences_removed_from_answers"] += 1
        answer = trim_words(answer, args.counsel_chat_max_words)
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
                "train_on": "last",
                "group": f"cc-{row['questionID']}",
            }
        )
    return out


def annomi_listening_turns(path: Path) -> set[tuple[str, str]]:
    """(transcript, utterance) of the therapist turns AnnoMI annotates as a reflection, or as a
    question whose subtype most of its annotators call open."""
    votes: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for row in csv.DictReader(path.open(encoding="utf-8")):
        if row["interlocutor"] == "therapist" and row["mi_quality"] == "high":
            listening = row["reflection_exists"] == "True" or row["question_subtype"] == "open"
            votes[(row["transcript_id"], row["utterance_id"])].append(listening)
    return {key for key, v in votes.items() if 2 * sum(v) >= len(v)}


def annomi(args: PrepareArguments, stats: Counter[str]) -> list[dict]:
    folder = Path(args.data_dir) / "AnnoMI"
    listening = annomi_listening_turns(folder / "AnnoMI-full.csv")
    by_transcript: dict[str, list[dict]] = defaultdict(list)
    for row in csv.DictReader((folder / "AnnoMI-simple.csv").open(encoding="utf-8")):
        if row["mi_quality"] == "high":
            by_transcript[row["transcript_id"]].append(row)
    stats["annomi_high_quality_transcripts"] = len(by_transcript)
    out = []
    for tid, rows in by_transcript.items():
        rows.sort(key=lambda r: int(r["utterance_id"]))
        # consecutive utterances of one speaker merged; a turn is trained when its last
        # utterance is a reflection or an open question
        turns: list[dict] = []
        for r in rows:
            role = "assistant" if r["interlocutor"] == "therapist" else "user"
            text = clean(r["utterance_text"])
            if not text:
                continue
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += " " + text
            else:
                turns.append({"role": role, "content": text})
            if role == "assistant":
                turns[-1]["listening"] = (tid, r["utterance_id"]) in listening
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant" or i == 0:
                continue
            if not turn["listening"]:
                stats["annomi_dropped_not_reflection_or_open_question"] += 1
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
                    "messages": [{"role": t["role"], "content": t["content"]} for t in window]
                    + [reply],
                    "source": "annomi",
                    "train_on": "last",
                    "group": f"annomi-{tid}",
                }
            )
    return out


def style(args: PrepareArguments, stats: Counter[str]) -> list[dict]:
    """The style dialogues, whole: every assistant turn is trained."""
    out = []
    for path in sorted(Path(args.style_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            out.append(
                {
                    "messages": [
                        {"role": m["role"], "content": m["content"].strip()}
                        for m in record["messages"]
                    ],
                    "source": "style",
                    "group": f"style-{record['id']}",
                    "topic": record["topic"],
                }
            )
    stats["style_dialogues"] = len(out)
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
    """Drop examples with a trained reply our output guard flags (medication / diagnosis
    opinions, risk topics): the service would withhold such a reply, so the model should not
    learn it. Every trained assistant turn of an example is checked. With
    ``prompts``, also drop examples whose last prompt the input guard would act on. Counts go
    to ``stats`` per source."""
    from companion.safety import ClassifyItem, SafetyClassifier
    from companion.types import Category, Role

    stage("loading the output guard")
    clf = SafetyClassifier.from_defaults()
    items: list[ClassifyItem] = []
    owner: list[tuple[int, str]] = []  # (example index, "reply" | "prompt") per item
    for i, ex in enumerate(examples):
        trained = ex["messages"][-1:] if ex.get("train_on") == "last" else ex["messages"]
        for m in trained:
            if m["role"] == "assistant":
                items.append(ClassifyItem(m["content"], Role.ASSISTANT))
                owner.append((i, "reply"))
        if prompts:
            user_turns = [m["content"] for m in ex["messages"] if m["role"] == "user"]
            items.append(ClassifyItem(user_turns[-1], Role.USER, tuple(user_turns[-4:-1])))
            owner.append((i, "prompt"))
    stage(f"guard policy {clf.policy_version}: checking {len(items)} turns")
    verdicts = []
    with tqdm(total=len(items), desc="guard filter", unit="turn", file=sys.stderr) as bar:
        for start in range(0, len(items), chunk):  # chunks: progress, same verdicts
            part = items[start : start + chunk]
            verdicts += clf.classify_batch(part)
            bar.update(len(part))
    flagged: dict[int, str] = {}
    for (i, kind), verdict in zip(owner, verdicts, strict=True):
        if verdict.category is not Category.NONE and i not in flagged:
            flagged[i] = f"{kind}_flagged_{verdict.category.value}"
    out = []
    for i, ex in enumerate(examples):
        if i in flagged:
            stats[f"dropped_{ex['source']}_{flagged[i]}"] += 1
        else:
            out.append(ex)
    stats["guard_policy_version"] = clf.policy_version  # type: ignore[assignment]
    return out


def main() -> None:
    (args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses()
    stats: Counter[str] = Counter()
    stage(f"reading the style dialogues from {args.style_dir}")
    st = style(args, stats)
    stage(f"style: {len(st)} dialogues")
    stage(f"reading counsel-chat from {args.data_dir}")
    cc = sample(counsel_chat(args, stats), args.counsel_chat_max_examples, args.seed)
    stage(f"counsel-chat: {stats['counsel_chat_rows']} rows -> {len(cc)} examples")
    stage(f"reading AnnoMI from {args.data_dir}")
    mi = sample(annomi(args, stats), args.annomi_max_examples, args.seed)
    stage(
        f"AnnoMI: {stats['annomi_high_quality_transcripts']} high-quality transcripts -> "
        f"{len(mi)} examples"
    )
    examples = st + cc + mi
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
