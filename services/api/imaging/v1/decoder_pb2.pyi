from services.api.imaging.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecodeRequest(_message.Message):
    __slots__ = ("dicom", "shared_output", "shared_dicom")
    DICOM_FIELD_NUMBER: _ClassVar[int]
    SHARED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SHARED_DICOM_FIELD_NUMBER: _ClassVar[int]
    dicom: bytes
    shared_output: bool
    shared_dicom: _tensor_pb2.SharedTensor
    def __init__(self, dicom: _Optional[bytes] = ..., shared_output: bool = ..., shared_dicom: _Optional[_Union[_tensor_pb2.SharedTensor, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _tensor_pb2.DecodedImage
    def __init__(self, image: _Optional[_Union[_tensor_pb2.DecodedImage, _Mapping]] = ...) -> None: ...
