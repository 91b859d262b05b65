import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Category(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_UNSPECIFIED: _ClassVar[Category]
    CATEGORY_NONE: _ClassVar[Category]
    CATEGORY_CRISIS: _ClassVar[Category]
    CATEGORY_MEDICAL: _ClassVar[Category]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_ANSWERED: _ClassVar[Action]
    ACTION_REDIRECTED: _ClassVar[Action]
    ACTION_CHECKED_IN: _ClassVar[Action]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_NONE: _ClassVar[Decision]
    DECISION_CHECK_IN: _ClassVar[Decision]
    DECISION_REDIRECT: _ClassVar[Decision]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_INPUT: _ClassVar[Direction]
    DIRECTION_OUTPUT: _ClassVar[Direction]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
CATEGORY_UNSPECIFIED: Category
CATEGORY_NONE: Category
CATEGORY_CRISIS: Category
CATEGORY_MEDICAL: Category
ACTION_UNSPECIFIED: Action
ACTION_ANSWERED: Action
ACTION_REDIRECTED: Action
ACTION_CHECKED_IN: Action
DECISION_UNSPECIFIED: Decision
DECISION_NONE: Decision
DECISION_CHECK_IN: Decision
DECISION_REDIRECT: Decision
DIRECTION_UNSPECIFIED: Direction
DIRECTION_INPUT: Direction
DIRECTION_OUTPUT: Direction
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role

class CreateSessionRequest(_message.Message):
    __slots__ = ("locale", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    locale: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, locale: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "locale")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    locale: str
    def __init__(self, session_id: _Optional[str] = ..., locale: _Optional[str] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("session_id", "text", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    text: str
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., text: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StreamMessageRequest(_message.Message):
    __slots__ = ("session_id", "text", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    text: str
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., text: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("category", "scores", "thresholds", "policy_version", "direction", "check_failed", "decision")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CHECK_FAILED_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    category: Category
    scores: _containers.ScalarMap[str, float]
    thresholds: _containers.ScalarMap[str, float]
    policy_version: str
    direction: Direction
    check_failed: bool
    decision: Decision
    def __init__(self, category: _Optional[_Union[Category, str]] = ..., scores: _Optional[_Mapping[str, float]] = ..., thresholds: _Optional[_Mapping[str, float]] = ..., policy_version: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., check_failed: _Optional[bool] = ..., decision: _Optional[_Union[Decision, str]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("name", "description", "phone", "sms", "url", "hours", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    SMS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    phone: str
    sms: str
    url: str
    hours: str
    source: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., phone: _Optional[str] = ..., sms: _Optional[str] = ..., url: _Optional[str] = ..., hours: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("text", "category", "action", "resources", "verdict", "turn_index", "input_verdict", "output_verdict")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_VERDICT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VERDICT_FIELD_NUMBER: _ClassVar[int]
    text: str
    category: Category
    action: Action
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    verdict: Verdict
    turn_index: int
    input_verdict: Verdict
    output_verdict: Verdict
    def __init__(self, text: _Optional[str] = ..., category: _Optional[_Union[Category, str]] = ..., action: _Optional[_Union[Action, str]] = ..., resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., turn_index: _Optional[int] = ..., input_verdict: _Optional[_Union[Verdict, _Mapping]] = ..., output_verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ReplyWithheld(_message.Message):
    __slots__ = ("category",)
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    category: Category
    def __init__(self, category: _Optional[_Union[Category, str]] = ...) -> None: ...

class TurnDone(_message.Message):
    __slots__ = ("reply", "withheld")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    reply: SendMessageResponse
    withheld: bool
    def __init__(self, reply: _Optional[_Union[SendMessageResponse, _Mapping]] = ..., withheld: _Optional[bool] = ...) -> None: ...

class StreamMessageResponse(_message.Message):
    __slots__ = ("delta", "withheld", "done")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    delta: TextDelta
    withheld: ReplyWithheld
    done: TurnDone
    def __init__(self, delta: _Optional[_Union[TextDelta, _Mapping]] = ..., withheld: _Optional[_Union[ReplyWithheld, _Mapping]] = ..., done: _Optional[_Union[TurnDone, _Mapping]] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("session_id", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("role", "text", "create_time", "category", "action", "scores", "index")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    role: Role
    text: str
    create_time: _timestamp_pb2.Timestamp
    category: Category
    action: Action
    scores: _containers.ScalarMap[str, float]
    index: int
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., text: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., category: _Optional[_Union[Category, str]] = ..., action: _Optional[_Union[Action, str]] = ..., scores: _Optional[_Mapping[str, float]] = ..., index: _Optional[int] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("turns", "next_page_token")
    TURNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    next_page_token: str
    def __init__(self, turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
