"""The gRPC service: ``companion.v1.CompanionService`` over the library.

Imports the library, never the reverse. Run it with ``companion serve`` or, in code::

    settings = ServerSettings.from_env()
    asyncio.run(serve(settings))
"""

from .app import SERVICE_NAME, CompanionServer, load_companion, serve, warm_up
from .interceptors import STATUS_CODES
from .metrics import Metrics
from .servicer import CompanionServicer
from .settings import ServerSettings

__all__ = [
    "SERVICE_NAME",
    "STATUS_CODES",
    "CompanionServer",
    "CompanionServicer",
    "Metrics",
    "ServerSettings",
    "load_companion",
    "serve",
    "warm_up",
]
