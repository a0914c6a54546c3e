from services.api.imaging.v1 import findings_pb2 as _findings_pb2
from services.api.imaging.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PostprocessRequest(_message.Message):
    __slots__ = ("pipeline", "outputs", "sop_instance_uids", "geometries", "volume", "heatmaps", "masks", "caveats")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UIDS_FIELD_NUMBER: _ClassVar[int]
    GEOMETRIES_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    CAVEATS_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    outputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    sop_instance_uids: _containers.RepeatedScalarFieldContainer[str]
    geometries: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.ImageGeometry]
    volume: _tensor_pb2.VolumeGeometry
    heatmaps: bool
    masks: bool
    caveats: _containers.RepeatedCompositeFieldContainer[_findings_pb2.Caveat]
    def __init__(self, pipeline: _Optional[str] = ..., outputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., sop_instance_uids: _Optional[_Iterable[str]] = ..., geometries: _Optional[_Iterable[_Union[_tensor_pb2.ImageGeometry, _Mapping]]] = ..., volume: _Optional[_Union[_tensor_pb2.VolumeGeometry, _Mapping]] = ..., heatmaps: bool = ..., masks: bool = ..., caveats: _Optional[_Iterable[_Union[_findings_pb2.Caveat, _Mapping]]] = ...) -> None: ...

class PostprocessResponse(_message.Message):
    __slots__ = ("findings", "triage_priority", "measurements", "segmentations", "caveats")
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    TRIAGE_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATIONS_FIELD_NUMBER: _ClassVar[int]
    CAVEATS_FIELD_NUMBER: _ClassVar[int]
    findings: _containers.RepeatedCompositeFieldContainer[_findings_pb2.Finding]
    triage_priority: _findings_pb2.TriagePriority
    measurements: _containers.RepeatedCompositeFieldContainer[_findings_pb2.Measurement]
    segmentations: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Segmentation]
    caveats: _containers.RepeatedCompositeFieldContainer[_findings_pb2.Caveat]
    def __init__(self, findings: _Optional[_Iterable[_Union[_findings_pb2.Finding, _Mapping]]] = ..., triage_priority: _Optional[_Union[_findings_pb2.TriagePriority, str]] = ..., measurements: _Optional[_Iterable[_Union[_findings_pb2.Measurement, _Mapping]]] = ..., segmentations: _Optional[_Iterable[_Union[_tensor_pb2.Segmentation, _Mapping]]] = ..., caveats: _Optional[_Iterable[_Union[_findings_pb2.Caveat, _Mapping]]] = ...) -> None: ...
