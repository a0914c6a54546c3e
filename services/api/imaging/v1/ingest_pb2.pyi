from services.api.imaging.v1 import gateway_pb2 as _gateway_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_STATE_UNSPECIFIED: _ClassVar[ExportState]
    EXPORT_STATE_PENDING: _ClassVar[ExportState]
    EXPORT_STATE_RETRYING: _ClassVar[ExportState]
    EXPORT_STATE_DELIVERED: _ClassVar[ExportState]
    EXPORT_STATE_DEAD_LETTERED: _ClassVar[ExportState]
    EXPORT_STATE_DROPPED: _ClassVar[ExportState]

class StudyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STUDY_STATE_UNSPECIFIED: _ClassVar[StudyState]
    STUDY_STATE_RECEIVING: _ClassVar[StudyState]
    STUDY_STATE_COMPLETE: _ClassVar[StudyState]
    STUDY_STATE_QUEUED: _ClassVar[StudyState]
    STUDY_STATE_ANALYSING: _ClassVar[StudyState]
    STUDY_STATE_DONE: _ClassVar[StudyState]
    STUDY_STATE_REFUSED: _ClassVar[StudyState]
    STUDY_STATE_FAILED: _ClassVar[StudyState]
    STUDY_STATE_DEAD_LETTERED: _ClassVar[StudyState]
EXPORT_STATE_UNSPECIFIED: ExportState
EXPORT_STATE_PENDING: ExportState
EXPORT_STATE_RETRYING: ExportState
EXPORT_STATE_DELIVERED: ExportState
EXPORT_STATE_DEAD_LETTERED: ExportState
EXPORT_STATE_DROPPED: ExportState
STUDY_STATE_UNSPECIFIED: StudyState
STUDY_STATE_RECEIVING: StudyState
STUDY_STATE_COMPLETE: StudyState
STUDY_STATE_QUEUED: StudyState
STUDY_STATE_ANALYSING: StudyState
STUDY_STATE_DONE: StudyState
STUDY_STATE_REFUSED: StudyState
STUDY_STATE_FAILED: StudyState
STUDY_STATE_DEAD_LETTERED: StudyState

class Export(_message.Message):
    __slots__ = ("key", "destination", "result_key", "study_instance_uid", "state", "kinds", "triage", "attempts", "created", "updated", "failure", "status", "receipt", "supersedes")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    RESULT_KEY_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TRIAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDES_FIELD_NUMBER: _ClassVar[int]
    key: str
    destination: str
    result_key: str
    study_instance_uid: str
    state: ExportState
    kinds: _containers.RepeatedScalarFieldContainer[str]
    triage: str
    attempts: int
    created: float
    updated: float
    failure: str
    status: str
    receipt: str
    supersedes: str
    def __init__(self, key: _Optional[str] = ..., destination: _Optional[str] = ..., result_key: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., state: _Optional[_Union[ExportState, str]] = ..., kinds: _Optional[_Iterable[str]] = ..., triage: _Optional[str] = ..., attempts: _Optional[int] = ..., created: _Optional[float] = ..., updated: _Optional[float] = ..., failure: _Optional[str] = ..., status: _Optional[str] = ..., receipt: _Optional[str] = ..., supersedes: _Optional[str] = ...) -> None: ...

class ListExportsRequest(_message.Message):
    __slots__ = ("destination", "states", "limit")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    destination: str
    states: _containers.RepeatedScalarFieldContainer[ExportState]
    limit: int
    def __init__(self, destination: _Optional[str] = ..., states: _Optional[_Iterable[_Union[ExportState, str]]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListExportsResponse(_message.Message):
    __slots__ = ("exports",)
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    exports: _containers.RepeatedCompositeFieldContainer[Export]
    def __init__(self, exports: _Optional[_Iterable[_Union[Export, _Mapping]]] = ...) -> None: ...

class ExportRef(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class NotAnalysed(_message.Message):
    __slots__ = ("series_instance_uid", "sop_class_uid", "modality", "instances", "reason")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    sop_class_uid: str
    modality: str
    instances: int
    reason: str
    def __init__(self, series_instance_uid: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., modality: _Optional[str] = ..., instances: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("study_instance_uid", "state", "instances", "calling_ae_title", "source_address", "completion_reason", "first_received", "last_received", "completed", "finished", "generation", "pipeline", "result_key", "analysed_instances", "not_analysed", "error", "attempts", "documents", "results")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    RESULT_KEY_FIELD_NUMBER: _ClassVar[int]
    ANALYSED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NOT_ANALYSED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    state: StudyState
    instances: int
    calling_ae_title: str
    source_address: str
    completion_reason: str
    first_received: float
    last_received: float
    completed: float
    finished: float
    generation: int
    pipeline: str
    result_key: str
    analysed_instances: int
    not_analysed: _containers.RepeatedCompositeFieldContainer[NotAnalysed]
    error: str
    attempts: int
    documents: _containers.RepeatedCompositeFieldContainer[_gateway_pb2.EncodedObject]
    results: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, study_instance_uid: _Optional[str] = ..., state: _Optional[_Union[StudyState, str]] = ..., instances: _Optional[int] = ..., calling_ae_title: _Optional[str] = ..., source_address: _Optional[str] = ..., completion_reason: _Optional[str] = ..., first_received: _Optional[float] = ..., last_received: _Optional[float] = ..., completed: _Optional[float] = ..., finished: _Optional[float] = ..., generation: _Optional[int] = ..., pipeline: _Optional[str] = ..., result_key: _Optional[str] = ..., analysed_instances: _Optional[int] = ..., not_analysed: _Optional[_Iterable[_Union[NotAnalysed, _Mapping]]] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., documents: _Optional[_Iterable[_Union[_gateway_pb2.EncodedObject, _Mapping]]] = ..., results: _Optional[_Iterable[str]] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListStudiesResponse(_message.Message):
    __slots__ = ("studies",)
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[Study]
    def __init__(self, studies: _Optional[_Iterable[_Union[Study, _Mapping]]] = ...) -> None: ...

class GetStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid", "documents")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    documents: bool
    def __init__(self, study_instance_uid: _Optional[str] = ..., documents: bool = ...) -> None: ...

class CloseStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid",)
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    def __init__(self, study_instance_uid: _Optional[str] = ...) -> None: ...

class PurgeStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid",)
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    def __init__(self, study_instance_uid: _Optional[str] = ...) -> None: ...

class PurgeStudyResponse(_message.Message):
    __slots__ = ("instances_deleted", "results_deleted")
    INSTANCES_DELETED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    instances_deleted: int
    results_deleted: int
    def __init__(self, instances_deleted: _Optional[int] = ..., results_deleted: _Optional[int] = ...) -> None: ...
