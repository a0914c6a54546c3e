from services.api.imaging.v1 import findings_pb2 as _findings_pb2
from services.api.imaging.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestPriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_PRIORITY_UNSPECIFIED: _ClassVar[RequestPriority]
    REQUEST_PRIORITY_ROUTINE: _ClassVar[RequestPriority]
    REQUEST_PRIORITY_URGENT: _ClassVar[RequestPriority]
REQUEST_PRIORITY_UNSPECIFIED: RequestPriority
REQUEST_PRIORITY_ROUTINE: RequestPriority
REQUEST_PRIORITY_URGENT: RequestPriority

class OutputOptions(_message.Message):
    __slots__ = ("heatmaps", "masks", "dicom_sr", "dicom_seg", "dicom_heatmap", "fhir", "report_refusal")
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    DICOM_SR_FIELD_NUMBER: _ClassVar[int]
    DICOM_SEG_FIELD_NUMBER: _ClassVar[int]
    DICOM_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    FHIR_FIELD_NUMBER: _ClassVar[int]
    REPORT_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    heatmaps: bool
    masks: bool
    dicom_sr: bool
    dicom_seg: bool
    dicom_heatmap: bool
    fhir: bool
    report_refusal: bool
    def __init__(self, heatmaps: bool = ..., masks: bool = ..., dicom_sr: bool = ..., dicom_seg: bool = ..., dicom_heatmap: bool = ..., fhir: bool = ..., report_refusal: bool = ...) -> None: ...

class EncodedObject(_message.Message):
    __slots__ = ("kind", "media_type", "data", "sop_class_uid", "sop_instance_uid", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    media_type: str
    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., media_type: _Optional[str] = ..., data: _Optional[bytes] = ..., sop_class_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("kind", "reason")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    reason: str
    def __init__(self, kind: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Origin(_message.Message):
    __slots__ = ("calling_ae_title", "source_address")
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    calling_ae_title: str
    source_address: str
    def __init__(self, calling_ae_title: _Optional[str] = ..., source_address: _Optional[str] = ...) -> None: ...

class AnalyzeRequest(_message.Message):
    __slots__ = ("instances", "pipeline", "priority", "client_request_id", "options", "origin", "uid_seed", "predecessor_documents")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    UID_SEED_FIELD_NUMBER: _ClassVar[int]
    PREDECESSOR_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedScalarFieldContainer[bytes]
    pipeline: str
    priority: RequestPriority
    client_request_id: str
    options: OutputOptions
    origin: Origin
    uid_seed: str
    predecessor_documents: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, instances: _Optional[_Iterable[bytes]] = ..., pipeline: _Optional[str] = ..., priority: _Optional[_Union[RequestPriority, str]] = ..., client_request_id: _Optional[str] = ..., options: _Optional[_Union[OutputOptions, _Mapping]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., uid_seed: _Optional[str] = ..., predecessor_documents: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AnalyzeHeader(_message.Message):
    __slots__ = ("pipeline", "priority", "client_request_id", "options", "origin", "uid_seed", "predecessor_documents")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    UID_SEED_FIELD_NUMBER: _ClassVar[int]
    PREDECESSOR_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    priority: RequestPriority
    client_request_id: str
    options: OutputOptions
    origin: Origin
    uid_seed: str
    predecessor_documents: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, pipeline: _Optional[str] = ..., priority: _Optional[_Union[RequestPriority, str]] = ..., client_request_id: _Optional[str] = ..., options: _Optional[_Union[OutputOptions, _Mapping]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., uid_seed: _Optional[str] = ..., predecessor_documents: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InstanceChunk(_message.Message):
    __slots__ = ("instance_index", "data")
    INSTANCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    instance_index: int
    data: bytes
    def __init__(self, instance_index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AnalyzeChunk(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AnalyzeHeader
    chunk: InstanceChunk
    def __init__(self, header: _Optional[_Union[AnalyzeHeader, _Mapping]] = ..., chunk: _Optional[_Union[InstanceChunk, _Mapping]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "milliseconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MILLISECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    milliseconds: float
    def __init__(self, stage: _Optional[str] = ..., milliseconds: _Optional[float] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("request_id", "pipeline", "model", "findings", "triage_priority", "timings", "measurements", "segmentations", "warnings", "caveats", "outputs", "refusal")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    TRIAGE_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATIONS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    CAVEATS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    pipeline: str
    model: ModelRef
    findings: _containers.RepeatedCompositeFieldContainer[_findings_pb2.Finding]
    triage_priority: _findings_pb2.TriagePriority
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    measurements: _containers.RepeatedCompositeFieldContainer[_findings_pb2.Measurement]
    segmentations: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Segmentation]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    caveats: _containers.RepeatedCompositeFieldContainer[_findings_pb2.Caveat]
    outputs: _containers.RepeatedCompositeFieldContainer[EncodedObject]
    refusal: Refusal
    def __init__(self, request_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., findings: _Optional[_Iterable[_Union[_findings_pb2.Finding, _Mapping]]] = ..., triage_priority: _Optional[_Union[_findings_pb2.TriagePriority, str]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., measurements: _Optional[_Iterable[_Union[_findings_pb2.Measurement, _Mapping]]] = ..., segmentations: _Optional[_Iterable[_Union[_tensor_pb2.Segmentation, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., caveats: _Optional[_Iterable[_Union[_findings_pb2.Caveat, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[EncodedObject, _Mapping]]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class ListPipelinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PipelineInfo(_message.Message):
    __slots__ = ("name", "description", "model", "accepts", "card", "auto_route", "intended_use")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROUTE_FIELD_NUMBER: _ClassVar[int]
    INTENDED_USE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    model: ModelRef
    accepts: str
    card: ModelCard
    auto_route: bool
    intended_use: IntendedUse
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., accepts: _Optional[str] = ..., card: _Optional[_Union[ModelCard, _Mapping]] = ..., auto_route: bool = ..., intended_use: _Optional[_Union[IntendedUse, _Mapping]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class IntendedUse(_message.Message):
    __slots__ = ("population", "age_years", "presentation_intent_types", "view_positions", "photometric_interpretations", "pixel_spacing_mm", "min_matrix", "outside", "age_unknown")
    POPULATION_FIELD_NUMBER: _ClassVar[int]
    AGE_YEARS_FIELD_NUMBER: _ClassVar[int]
    PRESENTATION_INTENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    VIEW_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PHOTOMETRIC_INTERPRETATIONS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    MIN_MATRIX_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_FIELD_NUMBER: _ClassVar[int]
    AGE_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    population: str
    age_years: Range
    presentation_intent_types: _containers.RepeatedScalarFieldContainer[str]
    view_positions: _containers.RepeatedScalarFieldContainer[str]
    photometric_interpretations: _containers.RepeatedScalarFieldContainer[str]
    pixel_spacing_mm: Range
    min_matrix: int
    outside: str
    age_unknown: str
    def __init__(self, population: _Optional[str] = ..., age_years: _Optional[_Union[Range, _Mapping]] = ..., presentation_intent_types: _Optional[_Iterable[str]] = ..., view_positions: _Optional[_Iterable[str]] = ..., photometric_interpretations: _Optional[_Iterable[str]] = ..., pixel_spacing_mm: _Optional[_Union[Range, _Mapping]] = ..., min_matrix: _Optional[int] = ..., outside: _Optional[str] = ..., age_unknown: _Optional[str] = ...) -> None: ...

class ModelCard(_message.Message):
    __slots__ = ("name", "version", "intended_use", "not_for_use", "metrics", "card_reference")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INTENDED_USE_FIELD_NUMBER: _ClassVar[int]
    NOT_FOR_USE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CARD_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    intended_use: str
    not_for_use: str
    metrics: _containers.ScalarMap[str, float]
    card_reference: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., intended_use: _Optional[str] = ..., not_for_use: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., card_reference: _Optional[str] = ...) -> None: ...

class ListPipelinesResponse(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineInfo]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[PipelineInfo, _Mapping]]] = ...) -> None: ...
