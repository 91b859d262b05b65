"""Server-side conversation storage: in-memory, SQLite and Redis implementations."""

from ._ids import is_valid_session_id, new_session_id
from .memory import InMemorySessionStore
from .redis import RedisSessionStore
from .sqlite import SQLiteSessionStore

__all__ = [
    "InMemorySessionStore",
    "RedisSessionStore",
    "SQLiteSessionStore",
    "is_valid_session_id",
    "new_session_id",
]
