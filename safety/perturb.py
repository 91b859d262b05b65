"""Seeded obfuscations of messages: the perturbed copy of the crisis test set.

Each message gets one of: leetspeak, spaced-out letters, repeated characters, emoji in place
of (or next to) words, or leetspeak plus repeats. The perturbations are written the way people
write them, independently of the classifier's normaliser; a few (unmapped emoji, partial leet)
are not fully undone by it, which is the point of measuring.
"""

from __future__ import annotations

import random
import re

KINDS = ("leet", "spaced", "repeat", "emoji", "leet+repeat")
_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_WORD_EMOJI = {
    "pills": "💊",
    "pill": "💊",
    "knife": "🔪",
    "rope": "🪢",
    "bridge": "🌉",
    "train": "🚆",
    "blood": "🩸",
    "dead": "💀",
    "die": "⚰️",
    "cry": "😭",
}
_MOOD_EMOJI = ("😞", "🥀", "🖤", "🙃", "😔", "💔", "😭", "💀")
_WORD_RE = re.compile(r"[A-Za-z]+")


def perturb(text: str, seed: int | str, kind: str | None = None) -> tuple[str, str]:
    """``(perturbed_text, kind)``; the same ``seed`` and text give the same output."""
    rng = random.Random(f"{seed}|{text}")
    kind = kind or rng.choice(KINDS)
    if kind == "leet":
        return _leet(text, rng), kind
    if kind == "spaced":
        return _spaced(text, rng), kind
    if kind == "repeat":
        return _repeat(text, rng), kind
    if kind == "emoji":
        return _emoji(text, rng), kind
    if kind == "leet+repeat":
        return _repeat(_leet(text, rng), rng), kind
    raise ValueError(f"kind={kind!r}; expected one of {KINDS}")


def _pick_words(text: str, rng: random.Random, k: int, min_len: int = 4) -> list[re.Match[str]]:
    words = [m for m in _WORD_RE.finditer(text) if len(m.group(0)) >= min_len]
    return rng.sample(words, min(k, len(words)))


def _replace(text: str, spans: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _leet(text: str, rng: random.Random) -> str:
    spans = []
    for m in _pick_words(text, rng, 3):
        word = "".join(
            _LEET[c.lower()] if c.lower() in _LEET and rng.random() < 0.6 else c for c in m.group(0)
        )
        spans.append((m.start(), m.end(), word))
    return _replace(text, spans)


def _spaced(text: str, rng: random.Random) -> str:
    words = sorted(_WORD_RE.finditer(text), key=lambda m: -len(m.group(0)))[:2]
    sep = rng.choice((" ", ".", "-"))
    return _replace(text, [(m.start(), m.end(), sep.join(m.group(0))) for m in words])


def _repeat(text: str, rng: random.Random) -> str:
    spans = []
    for m in _pick_words(text, rng, 2, min_len=3):
        word = m.group(0)
        i = rng.randrange(len(word))
        spans.append((m.start(), m.end(), word[:i] + word[i] * rng.randint(3, 6) + word[i + 1 :]))
    return _replace(text, spans)


def _emoji(text: str, rng: random.Random) -> str:
    spans = [
        (m.start(), m.end(), _WORD_EMOJI[m.group(0).lower()])
        for m in _WORD_RE.finditer(text)
        if m.group(0).lower() in _WORD_EMOJI
    ]
    out = _replace(text, spans)
    return out + " " + "".join(rng.choice(_MOOD_EMOJI) for _ in range(rng.randint(1, 3)))
