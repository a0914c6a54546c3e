from services.api.imaging.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreprocessRequest(_message.Message):
    __slots__ = ("pipeline", "images")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    images: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.DecodedImage]
    def __init__(self, pipeline: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_tensor_pb2.DecodedImage, _Mapping]]] = ...) -> None: ...

class PreprocessResponse(_message.Message):
    __slots__ = ("batch", "geometries", "volume", "warnings")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    GEOMETRIES_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    batch: _tensor_pb2.Tensor
    geometries: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.ImageGeometry]
    volume: _tensor_pb2.VolumeGeometry
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batch: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., geometries: _Optional[_Iterable[_Union[_tensor_pb2.ImageGeometry, _Mapping]]] = ..., volume: _Optional[_Union[_tensor_pb2.VolumeGeometry, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...
