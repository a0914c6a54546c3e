"""A volume pipeline's mask as a DICOM Segmentation (BINARY) on its source series.

The mask lives on the series' own grid (services.common.grids): slice k of the mask lies where
``affine @ (0, 0, k, 1)`` puts it. Each slice is matched to the source instance at that
position along the slice normal (sources arrive in any order), and the instances are handed to
highdicom in slice order, so that every frame of the Segmentation takes its plane position,
orientation and pixel spacing from, and references, the instance it was drawn on, in the
series' frame of reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from services.common import grids
from services.common.errors import InternalError, InvalidInput, Misconfiguration
from services.common.reports import codes
from services.common.reports._common import Context, truncate

SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage

# What highdicom places each frame by (Image Plane module, Frame of Reference).
_GEOMETRY_KEYWORDS = (
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "FrameOfReferenceUID",
)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def order_sources(series: Sequence[Dataset], grid: grids.VolumeGrid) -> list[Dataset]:
    """The instance each slice of ``grid`` lies on, in slice order.

    InvalidInput when an instance lacks what placing a frame needs; InternalError when the
    grid does not match the instances (a slice without an instance at its position, another
    orientation or matrix): the grid was made from these instances, so that is the platform's
    fault.
    """
    if not series:
        raise InternalError("the segmented series has no instance among the study's instances")
    for number, ds in enumerate(series, start=1):
        missing = [k for k in _GEOMETRY_KEYWORDS if not ds.get(k)]
        if missing:
            raise InvalidInput(
                f"instance {number} of the segmented series lacks {', '.join(missing)}: a "
                "DICOM Segmentation is placed in the series' frame of reference by them; ask "
                "without the DICOM Segmentation output"
            )
    frames_of_reference = {str(ds.FrameOfReferenceUID) for ds in series}
    if len(frames_of_reference) > 1:
        raise InvalidInput(
            "the segmented series' instances are in more than one frame of reference; a DICOM "
            "Segmentation needs one"
        )
    affine = np.asarray(grid.affine, dtype=np.float64)
    slices, rows, cols = grid.shape
    row_dir, col_dir = _unit(affine[:3, 0]), _unit(affine[:3, 1])
    normal = _unit(np.cross(row_dir, col_dir))
    step = float(abs(np.dot(affine[:3, 2], normal))) or float(grid.spacing[0]) or 1.0
    # Along the normal: a quarter of the slice step. In the plane: half a pixel.
    tolerance = 0.25 * step
    in_plane = 0.5 * float(min(grid.spacing[1], grid.spacing[2]) or 1.0)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in series])
    depths = positions @ normal
    ordered = []
    for k in range(slices):
        target = (affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        distances = np.abs(depths - float(target @ normal))
        best = int(np.argmin(distances))
        if distances[best] > tolerance:
            raise InternalError(
                f"slice {k} of the {slices}-slice mask has no source instance at its position "
                f"(nearest {distances[best]:.2f} mm along the slice normal)"
            )
        ds = series[best]
        delta = positions[best] - target
        offset = float(np.linalg.norm(delta - float(delta @ normal) * normal))
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        aligned = abs(float(iop[:3] @ row_dir)) > 0.999 and abs(float(iop[3:] @ col_dir)) > 0.999
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or not aligned:
            raise InternalError(
                f"slice {k} of the mask does not match its source instance's matrix or orientation"
            )
        if offset > in_plane:
            raise InternalError(f"slice {k} of the mask is shifted in plane from its source")
        ordered.append(ds)
    return ordered


def segmentation(
    sources: Sequence[Dataset],
    mask: grids.Segmentation,
    ctx: Context,
    *,
    series_number: int,
) -> hd.seg.Segmentation:
    """The mask as a BINARY Segmentation of one segment in the source study."""
    grid = mask.grid
    data = np.asarray(mask.mask)
    if data.shape != tuple(grid.shape):
        raise InternalError(f"mask of shape {data.shape} on a grid of shape {grid.shape}")
    if mask.label not in codes.SEGMENT_CODES:
        raise Misconfiguration(
            f"no segmented-property codes for segment label {mask.label!r}; add them to "
            "services/common/reports/codes.py SEGMENT_CODES"
        )
    category, kind = codes.SEGMENT_CODES[mask.label]
    series = [ds for ds in sources if str(ds.SeriesInstanceUID) == grid.series_instance_uid]
    ordered = order_sources(series, grid)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=truncate(mask.label, 64),
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=truncate(ctx.model.name, 64),
            family=codes.ALGORITHM_FAMILY,
            version=truncate(ctx.model.version, 64),
            source=truncate(ctx.manufacturer, 64),
            parameters={"pipeline": ctx.pipeline} if ctx.pipeline else None,
        ),
        tracking_uid=hd.UID(),
        tracking_id=truncate(f"{mask.label} ({ctx.pipeline})", 64),
    )
    return hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=(data > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ctx.manufacturer,
        manufacturer_model_name=truncate(ctx.manufacturer, 64),
        software_versions=ctx.software_version,
        device_serial_number=ctx.device_uid,
        content_label=_content_label(mask.label),
        content_description=truncate(f"{mask.label} mask, {ctx.algorithm}", 64),
        series_description=truncate(f"AI mask: {mask.label} ({ctx.algorithm})", 64),
        # Every slice is kept (an empty one says "not in the segment" as much as a full one
        # says "in it"), so each source instance is referenced.
        omit_empty_frames=False,
    )


def _content_label(label: str) -> str:
    """A Content Label (CS: upper case, digits, space, underscore; 16 characters)."""
    text = "".join(c if c.isalnum() else "_" for c in label.upper())
    return (text or "MASK")[:16]
