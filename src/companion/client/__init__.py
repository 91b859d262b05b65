"""Python clients of the companion gRPC service (sync and asyncio).

Example:
    >>> from companion.client import CompanionClient
    >>> with CompanionClient("127.0.0.1:50051", api_key=None) as cl:
    ...     sid = cl.create_session(locale="en-US")
    ...     r = cl.send(sid, "hello")            # r.text, r.category, r.action, r.resources
    ...     for ev in cl.stream(sid, "more"): ...
    ...     cl.history(sid); cl.delete_session(sid)
"""

from ..pipeline import TextDelta, TurnDone, Withheld
from ._async import AsyncCompanionClient
from ._common import ClientEvent
from ._sync import CompanionClient

__all__ = [
    "AsyncCompanionClient",
    "ClientEvent",
    "CompanionClient",
    "TextDelta",
    "TurnDone",
    "Withheld",
]
