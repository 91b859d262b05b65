"""How the Redis session store writes what it keeps: turns as JSON, the URL in logs, and key
patterns for SCAN."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from ..types import Action, Category, Role, Turn

__all__ = ["describe_url", "glob_escape", "turn_from_json", "turn_json"]


def describe_url(url: str) -> str:
    """``url`` without credentials or query, for logs and reprs: ``redis://host:port/db``.

    The password can sit in the user part or in a ``?password=`` query: neither is kept.
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # a malformed port: say nothing more about the URL
        port = ":?"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def turn_json(t: Turn) -> str:
    return json.dumps(
        {
            "role": t.role.value,
            "text": t.text,
            "ts": t.timestamp,
            "category": t.category.value,
            "action": t.action.value,
            "scores": dict(t.scores),
        },
        ensure_ascii=False,
    )


def turn_from_json(raw: str, index: int) -> Turn:
    d = json.loads(raw)
    return Turn(
        Role(d["role"]),
        d["text"],
        d["ts"],
        Category(d["category"]),
        Action(d["action"]),
        d["scores"],
        index,
    )
