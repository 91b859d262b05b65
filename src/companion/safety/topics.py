"""Risk topics that generated text must never raise.

Suicide, self-harm, overdose, methods and wishes to be dead are spoken about only by the fixed
templates (check-in, resource messages). A model reply that names them is withheld whatever
its tone: the trained reply head cannot reliably tell a supportive sentence about suicide from
a model musing about it, and the fixed templates say it better anyway. This is a floor under
the head, not a replacement for it (implicit replies still need the head).
"""

from __future__ import annotations

import re

from .normalize import normalize

__all__ = ["RISK_TOPIC_PATTERNS", "raises_risk_topic"]

_SELF = r"(?:my|your|him|her|them|our|one)sel(?:f|ves)"
_LIFE = r"(?:my|your|his|her|their|our|one's|a) (?:own )?li(?:fe|ves)"

RISK_TOPIC_PATTERNS: tuple[str, ...] = (
    r"suicid",
    r"\bkill(?:ing|ed|s)? " + _SELF,
    r"\b(?:end|ending|ended|take|taking|took) " + _LIFE,
    r"\bend(?:ing)? it all\b",
    r"\bself[- ]?(?:harm|injur|mutilat)",
    r"\b(?:harm|hurt|hang|poison|starv)(?:ing|s|ed|e)? " + _SELF,
    # "cut yourself some slack" and "cut myself a slice" are not self-harm
    r"\bcut(?:ting|s)? " + _SELF + r"(?! (?:some|a|an|off|short|out|free|loose|back)\b)",
    r"\boverdos",
    r"\blethal\b",
    r"\b(?:want|wanting|wants|wish|wished|wishing) (?:to )?(?:be )?(?:dead|die|dying)\b",
    r"\bbetter off dead\b",
    r"\b(?:not|don't|do not|no longer) (?:want|wanting) to (?:live|be alive|exist)\b",
    r"\bjump(?:ing|ed)? (?:off|from) (?:a|the) (?:bridge|building|roof|cliff|balcony)",
    r"\b(?:jump|step)(?:ping|ped)? in front of (?:a|the) (?:train|bus|car|lorry|truck)",
    r"\bhow many (?:pills|tablets)\b",
)
_RISK_TOPIC = re.compile("|".join(f"(?:{p})" for p in RISK_TOPIC_PATTERNS), re.IGNORECASE)


def raises_risk_topic(text: str) -> bool:
    """True when ``text`` (normalised: leetspeak, spacing, emoji) names a risk topic.

    Example:
        >>> raises_risk_topic("How long have you felt suicide might be the best option?")
        True
        >>> raises_risk_topic("That sounds like a really draining week.")
        False
    """
    return _RISK_TOPIC.search(normalize(text).replace("\u2019", "'")) is not None
