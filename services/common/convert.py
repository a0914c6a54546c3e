"""Domain objects <-> protobuf messages, for the servicers and clients (the only users)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.api.imaging.v1 import findings_pb2, tensor_pb2
from services.common import tensors
from services.common.errors import InvalidInput
from services.common.grids import Segmentation, VolumeGrid
from services.common.images import DecodedImage, Geometry, ImageAttributes, Lut, ModelInput


def _lut_to_proto(lut: Lut) -> tensor_pb2.Lut:
    return tensor_pb2.Lut(
        first_mapped=lut.first_mapped,
        bits_per_entry=lut.bits_per_entry,
        data=tensors.to_proto(lut.data),
        explanation=lut.explanation,
    )


def _lut_from_proto(msg: tensor_pb2.Lut) -> Lut:
    return Lut(msg.first_mapped, msg.bits_per_entry, tensors.from_proto(msg.data), msg.explanation)


def attributes_to_proto(attrs: ImageAttributes) -> tensor_pb2.ImageAttributes:
    msg = tensor_pb2.ImageAttributes(
        sop_instance_uid=attrs.sop_instance_uid,
        sop_class_uid=attrs.sop_class_uid,
        study_instance_uid=attrs.study_instance_uid,
        series_instance_uid=attrs.series_instance_uid,
        modality=attrs.modality,
        body_part_examined=attrs.body_part_examined,
        view_position=attrs.view_position,
        transfer_syntax_uid=attrs.transfer_syntax_uid,
        photometric_interpretation=attrs.photometric_interpretation,
        bits_stored=attrs.bits_stored,
        pixel_representation=attrs.pixel_representation,
        rescale_slope=attrs.rescale_slope,
        rescale_intercept=attrs.rescale_intercept,
        pixel_spacing=list(attrs.pixel_spacing or ()),
        number_of_frames=attrs.number_of_frames,
        frame_positions=[c for position in attrs.frame_positions for c in position],
        image_orientation_patient=list(attrs.image_orientation_patient or ()),
        voi_luts=[_lut_to_proto(lut) for lut in attrs.voi_luts],
        voi_lut_function=attrs.voi_lut_function,
        instance_number=attrs.instance_number,
        series_number=attrs.series_number,
    )
    if attrs.modality_lut is not None:
        msg.modality_lut.CopyFrom(_lut_to_proto(attrs.modality_lut))
    if attrs.slice_thickness is not None:
        msg.slice_thickness = attrs.slice_thickness
    if attrs.window_center is not None:
        msg.window_center = attrs.window_center
    if attrs.window_width is not None:
        msg.window_width = attrs.window_width
    return msg


def attributes_from_proto(msg: tensor_pb2.ImageAttributes) -> ImageAttributes:
    spacing = tuple(msg.pixel_spacing)
    return ImageAttributes(
        sop_instance_uid=msg.sop_instance_uid,
        sop_class_uid=msg.sop_class_uid,
        study_instance_uid=msg.study_instance_uid,
        series_instance_uid=msg.series_instance_uid,
        modality=msg.modality,
        body_part_examined=msg.body_part_examined,
        view_position=msg.view_position,
        transfer_syntax_uid=msg.transfer_syntax_uid,
        photometric_interpretation=msg.photometric_interpretation,
        bits_stored=msg.bits_stored,
        pixel_representation=msg.pixel_representation,
        rescale_slope=msg.rescale_slope,
        rescale_intercept=msg.rescale_intercept,
        window_center=msg.window_center if msg.HasField("window_center") else None,
        window_width=msg.window_width if msg.HasField("window_width") else None,
        pixel_spacing=(spacing[0], spacing[1]) if len(spacing) == 2 else None,
        number_of_frames=msg.number_of_frames,
        frame_positions=tuple(
            (float(p[0]), float(p[1]), float(p[2]))
            for p in np.reshape(np.asarray(msg.frame_positions, dtype=np.float64), (-1, 3))
        ),
        image_orientation_patient=tuple(msg.image_orientation_patient) or None,
        slice_thickness=msg.slice_thickness if msg.HasField("slice_thickness") else None,
        modality_lut=_lut_from_proto(msg.modality_lut) if msg.HasField("modality_lut") else None,
        voi_luts=tuple(_lut_from_proto(lut) for lut in msg.voi_luts),
        voi_lut_function=msg.voi_lut_function or "LINEAR",
        instance_number=msg.instance_number,
        series_number=msg.series_number,
    )


def image_to_proto(image: DecodedImage) -> tensor_pb2.DecodedImage:
    return tensor_pb2.DecodedImage(
        pixels=tensors.to_proto(image.pixels), attributes=attributes_to_proto(image.attributes)
    )


def image_from_proto(msg: tensor_pb2.DecodedImage) -> DecodedImage:
    return DecodedImage(tensors.from_proto(msg.pixels), attributes_from_proto(msg.attributes))


def priority_to_proto(name: str) -> str:
    """Enum value name; protobuf accepts names wherever it accepts enum numbers."""
    findings_pb2.TriagePriority.Value(f"TRIAGE_PRIORITY_{name}")  # raises on unknown names
    return f"TRIAGE_PRIORITY_{name}"


def priority_from_proto(value: findings_pb2.TriagePriority) -> str:
    return findings_pb2.TriagePriority.Name(value).removeprefix("TRIAGE_PRIORITY_")


def geometry_to_proto(geometry: Geometry) -> tensor_pb2.ImageGeometry:
    return tensor_pb2.ImageGeometry(**vars(geometry))


def geometry_from_proto(msg: tensor_pb2.ImageGeometry) -> Geometry:
    return Geometry(
        msg.rows, msg.cols, msg.region_top, msg.region_left, msg.region_rows, msg.region_cols
    )


def prepared_from_proto(
    geometries: Sequence[tensor_pb2.ImageGeometry], batch: np.ndarray | None = None
) -> list[ModelInput]:
    """Per-image geometry of a preprocessed batch (rows of ``batch`` when given)."""
    empty = np.zeros((0, 0, 0), np.float32)
    return [
        ModelInput(batch[i] if batch is not None else empty, geometry_from_proto(g))
        for i, g in enumerate(geometries)
    ]


def grid_to_proto(grid: VolumeGrid) -> tensor_pb2.VolumeGeometry:
    return tensor_pb2.VolumeGeometry(
        series_instance_uid=grid.series_instance_uid,
        shape=list(grid.shape),
        spacing=list(grid.spacing),
        affine=[float(v) for v in np.asarray(grid.affine, dtype=np.float64).ravel()],
    )


def grid_from_proto(msg: tensor_pb2.VolumeGeometry) -> VolumeGrid:
    if len(msg.shape) != 3 or len(msg.spacing) != 3 or len(msg.affine) != 16:
        raise InvalidInput("a volume geometry needs 3 shape, 3 spacing and 16 affine values")
    return VolumeGrid(
        msg.series_instance_uid,
        (int(msg.shape[0]), int(msg.shape[1]), int(msg.shape[2])),
        (float(msg.spacing[0]), float(msg.spacing[1]), float(msg.spacing[2])),
        np.asarray(msg.affine, dtype=np.float64).reshape(4, 4),
    )


def segmentation_to_proto(segmentation: Segmentation) -> tensor_pb2.Segmentation:
    return tensor_pb2.Segmentation(
        label=segmentation.label,
        geometry=grid_to_proto(segmentation.grid),
        mask=tensors.to_proto(segmentation.mask),
    )


def segmentation_from_proto(msg: tensor_pb2.Segmentation) -> Segmentation:
    return Segmentation(msg.label, grid_from_proto(msg.geometry), tensors.from_proto(msg.mask))
