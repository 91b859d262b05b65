"""Session ids: 128 random bits, URL-safe base64 without padding (22 characters)."""

from __future__ import annotations

import re
import secrets

__all__ = ["is_valid_session_id", "new_session_id"]

_ID = re.compile(r"[A-Za-z0-9_-]{22}")


def new_session_id() -> str:
    """A fresh unguessable session id (``secrets``, 128 bits)."""
    return secrets.token_urlsafe(16)


def is_valid_session_id(session_id: str) -> bool:
    """True when ``session_id`` has the shape of an id this library issues."""
    return bool(_ID.fullmatch(session_id))
