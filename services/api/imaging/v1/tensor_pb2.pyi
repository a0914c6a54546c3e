from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_UINT16: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_UINT8: DType
DTYPE_INT8: DType
DTYPE_UINT16: DType
DTYPE_INT16: DType
DTYPE_UINT32: DType
DTYPE_INT32: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ImageAttributes(_message.Message):
    __slots__ = ("sop_instance_uid", "sop_class_uid", "study_instance_uid", "series_instance_uid", "modality", "body_part_examined", "view_position", "transfer_syntax_uid", "photometric_interpretation", "bits_stored", "pixel_representation", "rescale_slope", "rescale_intercept", "window_center", "window_width", "pixel_spacing", "number_of_frames", "frame_positions", "image_orientation_patient", "slice_thickness", "modality_lut", "voi_luts", "voi_lut_function", "instance_number", "series_number", "invalid_attributes", "patient_age_years", "presentation_intent_type")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_EXAMINED_FIELD_NUMBER: _ClassVar[int]
    VIEW_POSITION_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_UID_FIELD_NUMBER: _ClassVar[int]
    PHOTOMETRIC_INTERPRETATION_FIELD_NUMBER: _ClassVar[int]
    BITS_STORED_FIELD_NUMBER: _ClassVar[int]
    PIXEL_REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    RESCALE_SLOPE_FIELD_NUMBER: _ClassVar[int]
    RESCALE_INTERCEPT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_CENTER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_WIDTH_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SPACING_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FRAME_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ORIENTATION_PATIENT_FIELD_NUMBER: _ClassVar[int]
    SLICE_THICKNESS_FIELD_NUMBER: _ClassVar[int]
    MODALITY_LUT_FIELD_NUMBER: _ClassVar[int]
    VOI_LUTS_FIELD_NUMBER: _ClassVar[int]
    VOI_LUT_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SERIES_NUMBER_FIELD_NUMBER: _ClassVar[int]
    INVALID_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PATIENT_AGE_YEARS_FIELD_NUMBER: _ClassVar[int]
    PRESENTATION_INTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    body_part_examined: str
    view_position: str
    transfer_syntax_uid: str
    photometric_interpretation: str
    bits_stored: int
    pixel_representation: int
    rescale_slope: float
    rescale_intercept: float
    window_center: float
    window_width: float
    pixel_spacing: _containers.RepeatedScalarFieldContainer[float]
    number_of_frames: int
    frame_positions: _containers.RepeatedScalarFieldContainer[float]
    image_orientation_patient: _containers.RepeatedScalarFieldContainer[float]
    slice_thickness: float
    modality_lut: Lut
    voi_luts: _containers.RepeatedCompositeFieldContainer[Lut]
    voi_lut_function: str
    instance_number: int
    series_number: int
    invalid_attributes: _containers.RepeatedScalarFieldContainer[str]
    patient_age_years: float
    presentation_intent_type: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., modality: _Optional[str] = ..., body_part_examined: _Optional[str] = ..., view_position: _Optional[str] = ..., transfer_syntax_uid: _Optional[str] = ..., photometric_interpretation: _Optional[str] = ..., bits_stored: _Optional[int] = ..., pixel_representation: _Optional[int] = ..., rescale_slope: _Optional[float] = ..., rescale_intercept: _Optional[float] = ..., window_center: _Optional[float] = ..., window_width: _Optional[float] = ..., pixel_spacing: _Optional[_Iterable[float]] = ..., number_of_frames: _Optional[int] = ..., frame_positions: _Optional[_Iterable[float]] = ..., image_orientation_patient: _Optional[_Iterable[float]] = ..., slice_thickness: _Optional[float] = ..., modality_lut: _Optional[_Union[Lut, _Mapping]] = ..., voi_luts: _Optional[_Iterable[_Union[Lut, _Mapping]]] = ..., voi_lut_function: _Optional[str] = ..., instance_number: _Optional[int] = ..., series_number: _Optional[int] = ..., invalid_attributes: _Optional[_Iterable[str]] = ..., patient_age_years: _Optional[float] = ..., presentation_intent_type: _Optional[str] = ...) -> None: ...

class Lut(_message.Message):
    __slots__ = ("first_mapped", "bits_per_entry", "data", "explanation")
    FIRST_MAPPED_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_ENTRY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    first_mapped: int
    bits_per_entry: int
    data: Tensor
    explanation: str
    def __init__(self, first_mapped: _Optional[int] = ..., bits_per_entry: _Optional[int] = ..., data: _Optional[_Union[Tensor, _Mapping]] = ..., explanation: _Optional[str] = ...) -> None: ...

class DecodedImage(_message.Message):
    __slots__ = ("pixels", "attributes", "shared_pixels")
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SHARED_PIXELS_FIELD_NUMBER: _ClassVar[int]
    pixels: Tensor
    attributes: ImageAttributes
    shared_pixels: SharedTensor
    def __init__(self, pixels: _Optional[_Union[Tensor, _Mapping]] = ..., attributes: _Optional[_Union[ImageAttributes, _Mapping]] = ..., shared_pixels: _Optional[_Union[SharedTensor, _Mapping]] = ...) -> None: ...

class SharedTensor(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ImageGeometry(_message.Message):
    __slots__ = ("rows", "cols", "region_top", "region_left", "region_rows", "region_cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    REGION_TOP_FIELD_NUMBER: _ClassVar[int]
    REGION_LEFT_FIELD_NUMBER: _ClassVar[int]
    REGION_ROWS_FIELD_NUMBER: _ClassVar[int]
    REGION_COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    region_top: int
    region_left: int
    region_rows: int
    region_cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., region_top: _Optional[int] = ..., region_left: _Optional[int] = ..., region_rows: _Optional[int] = ..., region_cols: _Optional[int] = ...) -> None: ...

class VolumeGeometry(_message.Message):
    __slots__ = ("series_instance_uid", "shape", "spacing", "affine")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    AFFINE_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    spacing: _containers.RepeatedScalarFieldContainer[float]
    affine: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, series_instance_uid: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., spacing: _Optional[_Iterable[float]] = ..., affine: _Optional[_Iterable[float]] = ...) -> None: ...

class Segmentation(_message.Message):
    __slots__ = ("label", "geometry", "mask")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    label: str
    geometry: VolumeGeometry
    mask: Tensor
    def __init__(self, label: _Optional[str] = ..., geometry: _Optional[_Union[VolumeGeometry, _Mapping]] = ..., mask: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
