from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TriagePriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAGE_PRIORITY_UNSPECIFIED: _ClassVar[TriagePriority]
    TRIAGE_PRIORITY_ROUTINE: _ClassVar[TriagePriority]
    TRIAGE_PRIORITY_URGENT: _ClassVar[TriagePriority]
    TRIAGE_PRIORITY_STAT: _ClassVar[TriagePriority]

class FindingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINDING_STATUS_UNSPECIFIED: _ClassVar[FindingStatus]
    FINDING_STATUS_POSITIVE: _ClassVar[FindingStatus]
    FINDING_STATUS_NEGATIVE: _ClassVar[FindingStatus]
    FINDING_STATUS_INDETERMINATE: _ClassVar[FindingStatus]

class CaveatReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAVEAT_REASON_UNSPECIFIED: _ClassVar[CaveatReason]
    CAVEAT_REASON_OUTSIDE_INTENDED_USE: _ClassVar[CaveatReason]
    CAVEAT_REASON_OUT_OF_DISTRIBUTION: _ClassVar[CaveatReason]
    CAVEAT_REASON_IMAGE_QUALITY: _ClassVar[CaveatReason]
TRIAGE_PRIORITY_UNSPECIFIED: TriagePriority
TRIAGE_PRIORITY_ROUTINE: TriagePriority
TRIAGE_PRIORITY_URGENT: TriagePriority
TRIAGE_PRIORITY_STAT: TriagePriority
FINDING_STATUS_UNSPECIFIED: FindingStatus
FINDING_STATUS_POSITIVE: FindingStatus
FINDING_STATUS_NEGATIVE: FindingStatus
FINDING_STATUS_INDETERMINATE: FindingStatus
CAVEAT_REASON_UNSPECIFIED: CaveatReason
CAVEAT_REASON_OUTSIDE_INTENDED_USE: CaveatReason
CAVEAT_REASON_OUT_OF_DISTRIBUTION: CaveatReason
CAVEAT_REASON_IMAGE_QUALITY: CaveatReason

class Caveat(_message.Message):
    __slots__ = ("reason", "detail", "sop_instance_uid")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    reason: CaveatReason
    detail: str
    sop_instance_uid: str
    def __init__(self, reason: _Optional[_Union[CaveatReason, str]] = ..., detail: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("code", "coding_scheme", "display_name", "probability", "threshold", "positive", "sop_instance_uid", "heatmap_png", "status", "caveats", "ood_score", "ood_threshold")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODING_SCHEME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CAVEATS_FIELD_NUMBER: _ClassVar[int]
    OOD_SCORE_FIELD_NUMBER: _ClassVar[int]
    OOD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    code: str
    coding_scheme: str
    display_name: str
    probability: float
    threshold: float
    positive: bool
    sop_instance_uid: str
    heatmap_png: bytes
    status: FindingStatus
    caveats: _containers.RepeatedCompositeFieldContainer[Caveat]
    ood_score: float
    ood_threshold: float
    def __init__(self, code: _Optional[str] = ..., coding_scheme: _Optional[str] = ..., display_name: _Optional[str] = ..., probability: _Optional[float] = ..., threshold: _Optional[float] = ..., positive: bool = ..., sop_instance_uid: _Optional[str] = ..., heatmap_png: _Optional[bytes] = ..., status: _Optional[_Union[FindingStatus, str]] = ..., caveats: _Optional[_Iterable[_Union[Caveat, _Mapping]]] = ..., ood_score: _Optional[float] = ..., ood_threshold: _Optional[float] = ...) -> None: ...

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
