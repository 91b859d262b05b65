"""Undo common obfuscations before a message is encoded.

People who do not want a filter to notice them write ``k1ll mys3lf``, ``k i l l  m y s e l f``,
``diiiie`` or put the word in an emoji. :func:`normalize` maps these back to plain text so that
the encoder sees what a human reader sees. It is deliberately conservative: numbers with units
("50mg", "3am", "b12") and ordinary punctuation stay as they are.

The rules are versioned (:data:`NORMALIZATION_VERSION`); the classifier artifact records the
version it was trained with.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["NORMALIZATION_VERSION", "normalize"]

NORMALIZATION_VERSION = "1"
"""Bump when the rules change: a head must be retrained on the new text."""

# Emoji that carry meaning for the guards become words; every other emoji becomes a space.
_EMOJI_WORDS = {
    "💊": " pills ",
    "🔪": " knife ",
    "🗡": " knife ",
    "🔫": " gun ",
    "🪢": " rope ",
    "⚰": " coffin ",
    "🪦": " grave ",
    "🩸": " blood ",
    "☠": " skull ",
    "💀": " skull ",
    "🌉": " bridge ",
    "🚆": " train ",
    "🚂": " train ",
    "🚇": " train ",
    "🏢": " building ",
    "😭": " crying ",
    "😢": " crying ",
    "💔": " heartbroken ",
    "🩹": " bandage ",
    "🏥": " hospital ",
    "💉": " needle ",
    "🍾": " bottle ",
    "🥃": " alcohol ",
    "🍷": " alcohol ",
}
_EMOJI_RE = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, symbols and pictographs
    "\u2600-\u27bf"  # misc symbols, dingbats
    "\u2b00-\u2bff"
    "\ufe0e\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "]+"
)
_INVISIBLE_RE = re.compile("[\u200b\u200c\u2060\ufeff\u00ad]")

# Leet characters that stand for letters. Digits only count inside words with real letters.
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
_LEET_INNER_ONLY = {"!": "i", "|": "l"}
_NUMBER_WITH_UNIT_RE = re.compile(r"^\d+[a-z]{1,4}$", re.IGNORECASE)
_TOKEN_RE = re.compile(r"\S+")

# Three or more single letters separated by one space, dot, dash, underscore or star.
_SPACED_RE = re.compile(r"(?<![\w])(?:[a-z][ .\-_*]){2,}[a-z](?![\w])", re.IGNORECASE)
_SPACED_SEP_RE = re.compile(r"[ .\-_*]")
_REPEAT_RE = re.compile(r"(.)\1{2,}")
# English rarely doubles these letters, so a run of them is one letter ("diiiie" -> "die").
_RARELY_DOUBLED = frozenset("aiuyhwjkqvxAIUYHWJKQVX")
_SPACE_RE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Plain text for the encoder: Unicode folded, emoji named, leet, spacing and repeats undone.

    Args:
        text: A message as the person wrote it.

    Returns:
        The normalised message (never logged, never stored).

    Example:
        >>> normalize("i w4nt to k1ll mys3lf 💊💊")
        'i want to kill myself pills pills'
    """
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE_RE.sub("", text)
    for emoji, word in _EMOJI_WORDS.items():
        if emoji in text:
            text = text.replace(emoji, word)
    text = _EMOJI_RE.sub(" ", text)
    text = _SPACED_RE.sub(lambda m: _SPACED_SEP_RE.sub("", m.group(0)), text)
    text = _TOKEN_RE.sub(lambda m: _unleet(m.group(0)), text)
    text = _REPEAT_RE.sub(_shorten_run, text)
    return _SPACE_RE.sub(" ", text).strip()


def _unleet(token: str) -> str:
    letters = sum(c.isalpha() for c in token)
    if letters < 3 or _NUMBER_WITH_UNIT_RE.match(token):
        return token
    chars = list(token)
    for i, c in enumerate(chars):
        prev_alpha = i > 0 and chars[i - 1].isalpha()
        next_alpha = i + 1 < len(chars) and _alpha_or_leet(chars[i + 1])
        if c in _LEET and (prev_alpha or next_alpha):
            chars[i] = _LEET[c]
        elif c in _LEET_INNER_ONLY and prev_alpha and next_alpha:
            chars[i] = _LEET_INNER_ONLY[c]
    return "".join(chars)


def _shorten_run(m: re.Match[str]) -> str:
    c = m.group(1)
    return c if c in _RARELY_DOUBLED else c + c


def _alpha_or_leet(c: str) -> bool:
    return c.isalpha() or c in _LEET
