"""Check style-data files against the rules of ``training/STYLE_GUIDE.md`` that a script can see.

Each line of a style file is ``{"id", "topic", "messages": [{"role", "content"}...]}``: user
first, roles alternating, assistant last, 2-8 messages. Assistant replies are 20-90 words (a
closing reply to thanks or goodbye may be 8-30), carry no directive ("you should"), no list
and no risk topic. Prints one line per problem and exits 1 if there is any.

    python training/check_style.py training/data/style/*.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from companion.safety.topics import raises_risk_topic

DIRECTIVE = re.compile(r"\byou (should|need to|must|have to|ought to)\b", re.I)
LIST_LINE = re.compile(r"(^|\n)\s*(\d+[.)]|[-*\u2022])\s+\S")
CLOSING = re.compile(r"\b(thanks|thank you|thx|ty|bye|goodnight|good night|night|cheers)\b", re.I)


def problems(record: dict, where: str) -> Iterator[str]:
    """The rule breaks of one dialogue, each as a line naming ``where``."""
    messages = record.get("messages")
    if not isinstance(record.get("id"), str) or not isinstance(record.get("topic"), str):
        yield f"{where}: needs string 'id' and 'topic'"
    if not isinstance(messages, list) or not 2 <= len(messages) <= 8:
        yield f"{where}: needs 2-8 messages"
        return
    for i, message in enumerate(messages):
        role = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != role or not str(message.get("content", "")).strip():
            yield f"{where}: message {i} must be a non-empty {role} turn"
            return
    if messages[-1]["role"] != "assistant":
        yield f"{where}: must end with an assistant turn"
    for i in range(1, len(messages), 2):
        reply = messages[i]["content"]
        words = len(reply.split())
        closing = bool(CLOSING.search(messages[i - 1]["content"]))
        low, high = (8, 90) if closing else (20, 90)
        if not low <= words <= high:
            yield f"{where}: reply {i} has {words} words (wants {low}-{high})"
        if DIRECTIVE.search(reply):
            yield f"{where}: reply {i} is directive ('you should' and kin)"
        if LIST_LINE.search(reply):
            yield f"{where}: reply {i} is a list"
    for i, message in enumerate(messages):
        if raises_risk_topic(message["content"]):
            yield f"{where}: message {i} raises a risk topic"


def check(paths: list[Path]) -> list[str]:
    """Every problem in the files, plus duplicate ids across them."""
    out: list[str] = []
    seen: set[str] = set()
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                out.append(f"{where}: not JSON ({exc.msg})")
                continue
            out.extend(problems(record, where))
            if record.get("id") in seen:
                out.append(f"{where}: duplicate id {record.get('id')}")
            seen.add(record.get("id"))
    return out


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv]
    found = check(paths)
    for line in found:
        print(line)
    print(f"{len(found)} problems in {len(paths)} files", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
