"""Server-side conversation storage: in-memory and SQLite implementations."""

from ._ids import is_valid_session_id, new_session_id
from .memory import InMemorySessionStore
from .sqlite import SQLiteSessionStore

__all__ = ["InMemorySessionStore", "SQLiteSessionStore", "is_valid_session_id", "new_session_id"]
