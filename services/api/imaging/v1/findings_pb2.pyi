from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TriagePriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAGE_PRIORITY_UNSPECIFIED: _ClassVar[TriagePriority]
    TRIAGE_PRIORITY_ROUTINE: _ClassVar[TriagePriority]
    TRIAGE_PRIORITY_URGENT: _ClassVar[TriagePriority]
    TRIAGE_PRIORITY_STAT: _ClassVar[TriagePriority]
TRIAGE_PRIORITY_UNSPECIFIED: TriagePriority
TRIAGE_PRIORITY_ROUTINE: TriagePriority
TRIAGE_PRIORITY_URGENT: TriagePriority
TRIAGE_PRIORITY_STAT: TriagePriority

class Finding(_message.Message):
    __slots__ = ("code", "coding_scheme", "display_name", "probability", "threshold", "positive", "sop_instance_uid", "heatmap_png")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODING_SCHEME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    code: str
    coding_scheme: str
    display_name: str
    probability: float
    threshold: float
    positive: bool
    sop_instance_uid: str
    heatmap_png: bytes
    def __init__(self, code: _Optional[str] = ..., coding_scheme: _Optional[str] = ..., display_name: _Optional[str] = ..., probability: _Optional[float] = ..., threshold: _Optional[float] = ..., positive: bool = ..., sop_instance_uid: _Optional[str] = ..., heatmap_png: _Optional[bytes] = ...) -> None: ...

class Measurement(_message.Message):
    __slots__ = ("code", "coding_scheme", "display_name", "value", "unit", "series_instance_uid")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODING_SCHEME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    code: str
    coding_scheme: str
    display_name: str
    value: float
    unit: str
    series_instance_uid: str
    def __init__(self, code: _Optional[str] = ..., coding_scheme: _Optional[str] = ..., display_name: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ..., series_instance_uid: _Optional[str] = ...) -> None: ...
