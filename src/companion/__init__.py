"""companion: a safety-guarded conversational wellness companion.

It is a wellness companion, never a diagnostic or therapeutic system. Every turn runs through
input guard -> generation -> output guard; when a guard fires, the user gets a fixed,
locale-aware resource message instead of generated text.
"""

from ._companion import Companion, Session
from .config import GenerationConfig, PipelineConfig
from .errors import (
    Cancelled,
    CompanionError,
    DeadlineExceeded,
    DuplicateRequest,
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    PermissionDenied,
    ResourceExhausted,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from .pipeline import Pipeline, StreamEvent, TextDelta, TurnDone, Withheld
from .resources import ResourceCatalogue
from .types import (
    Action,
    Category,
    Decision,
    Direction,
    Reply,
    Resource,
    Role,
    SessionInfo,
    StoredRequest,
    Turn,
    Verdict,
)

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Cancelled",
    "Category",
    "Companion",
    "CompanionError",
    "DeadlineExceeded",
    "Decision",
    "Direction",
    "DuplicateRequest",
    "FailedPrecondition",
    "GenerationConfig",
    "InvalidArgument",
    "ModelLoadError",
    "PermissionDenied",
    "Pipeline",
    "PipelineConfig",
    "Reply",
    "Resource",
    "ResourceCatalogue",
    "ResourceExhausted",
    "Role",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "StoredRequest",
    "StreamEvent",
    "TextDelta",
    "Turn",
    "TurnDone",
    "Unauthenticated",
    "Unavailable",
    "Verdict",
    "Withheld",
    "__version__",
]
