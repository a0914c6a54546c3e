"""A volume pipeline's mask as a DICOM Segmentation (BINARY) on its source series.

The mask lives on the series' own grid (services.common.grids): slice k of the mask lies where
``affine @ (0, 0, k, 1)`` puts it. Each slice is matched to the source plane at that position
along the slice normal (sources arrive in any order), and handed to highdicom in slice order,
so that every frame of the Segmentation takes its plane position, orientation and pixel
spacing from, and references, the instance (or frame) it was drawn on, in the series' frame
of reference.

A source plane is a classic single-frame image (Image Plane module, PS3.3 C.7.6.2) or one
frame of an enhanced multi-frame image, whose geometry lives in its functional groups (PS3.3
C.7.6.16: Pixel Measures C.7.6.16.2.1, Plane Position C.7.6.16.2.3, Plane Orientation
C.7.6.16.2.4), per frame or shared. Where several planes lie at one position (the time points
of an fMRI run, a repeated slice), the first in acquisition order (InstanceNumber, SOP
Instance UID, frame) is the one referenced: the plane the volume assembly
(services.preprocessor.assembly) kept, so the mask references the pixels it was drawn on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from services.common import grids
from services.common.errors import InternalError, InvalidInput, Misconfiguration, UnsupportedInput
from services.gateway.reports import codes, uids
from services.gateway.reports._common import Context, truncate

SOP_CLASS_UID = SegmentationStorage

# What every source needs at its top level (Image Pixel module, Frame of Reference).
_TOP_KEYWORDS = ("Rows", "Columns", "FrameOfReferenceUID")
# What a classic image places its one plane by (Image Plane module).
_PLANE_KEYWORDS = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")
# The functional group (PS3.3 C.7.6.16.2) holding each of them in an enhanced image.
_FUNCTIONAL_GROUPS = {
    "PixelSpacing": "PixelMeasuresSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "ImagePositionPatient": "PlanePositionSequence",
}
# Planes closer than this (mm, along the normal) are at the same position (as the assembly's).
_SAME_POSITION_MM = 0.01


@dataclass(frozen=True, eq=False)
class SourcePlane:
    """Where one frame of a source instance lies (patient LPS mm)."""

    source: Dataset
    frame: int | None  # 0-based frame of an enhanced (multi-frame) image; None: classic
    position: np.ndarray  # (3,) ImagePositionPatient
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    order: tuple[int, str, int]  # acquisition order: InstanceNumber, SOP Instance UID, frame


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _is_enhanced(ds: Dataset) -> bool:
    """Geometry in functional groups (PS3.3 C.7.6.16), not in the Image Plane module."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _frame_value(ds: Dataset, frame: int, keyword: str) -> Any:
    """``keyword`` of one frame: from its per-frame functional group, else the shared one
    (PS3.3 C.7.6.16: a functional group is in one of them), else the top level."""
    group = _FUNCTIONAL_GROUPS[keyword]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in (
        per_frame[frame] if frame < len(per_frame) else None,
        shared[0] if shared else None,
    ):
        sequence = item.get(group) if item is not None else None
        if sequence and sequence[0].get(keyword):
            return sequence[0].get(keyword)
    return ds.get(keyword) or None


def _planes(series: Sequence[Dataset]) -> list[SourcePlane]:
    """Every plane of the series; InvalidInput naming what one lacks."""
    planes: list[SourcePlane] = []
    for number, ds in enumerate(series, start=1):
        missing = [k for k in _TOP_KEYWORDS if not ds.get(k)]
        enhanced = _is_enhanced(ds)
        frames = int(ds.get("NumberOfFrames") or 1) if enhanced else 1
        values: list[dict[str, Any]] = []
        for frame in range(frames):
            found = {
                k: _frame_value(ds, frame, k) if enhanced else ds.get(k) for k in _PLANE_KEYWORDS
            }
            missing += [k for k, v in found.items() if not v and k not in missing]
            values.append(found)
        if missing:
            where = " (in neither its top level nor its functional groups)" if enhanced else ""
            raise InvalidInput(
                f"instance {number} of the segmented series lacks {', '.join(missing)}{where}: "
                "a DICOM Segmentation is placed in the series' frame of reference by them; ask "
                "without the DICOM Segmentation output"
            )
        instance = _instance_number(ds)
        for frame, found in enumerate(values):
            planes.append(
                SourcePlane(
                    source=ds,
                    frame=frame if enhanced else None,
                    position=np.array([float(v) for v in found["ImagePositionPatient"]]),
                    orientation=np.array([float(v) for v in found["ImageOrientationPatient"]]),
                    order=(instance, str(ds.SOPInstanceUID), frame),
                )
            )
    return planes


def _instance_number(ds: Dataset) -> int:
    """InstanceNumber (IS) for ordering; 0 when absent or not an integer, as the decoder's."""
    try:
        return int(str(ds.get("InstanceNumber") or 0).strip() or 0)
    except ValueError:
        return 0


def order_sources(series: Sequence[Dataset], grid: grids.VolumeGrid) -> list[SourcePlane]:
    """The source plane each slice of ``grid`` lies on, in slice order.

    InvalidInput when an instance lacks what placing a frame needs; InternalError when the
    grid does not match the instances (a slice without a plane at its position, another
    orientation or matrix): the grid was made from these instances, so that is the platform's
    fault.
    """
    if not series:
        raise InternalError("the segmented series has no instance among the study's instances")
    planes = _planes(series)
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
    positions = np.stack([p.position for p in planes])
    depths = positions @ normal
    ordered = []
    for k in range(slices):
        target = (affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        distances = np.abs(depths - float(target @ normal))
        nearest = float(distances.min())
        if nearest > tolerance:
            raise InternalError(
                f"slice {k} of the {slices}-slice mask has no source instance at its position "
                f"(nearest {nearest:.2f} mm along the slice normal)"
            )
        tied = np.flatnonzero(distances <= nearest + _SAME_POSITION_MM)
        best = min((int(i) for i in tied), key=lambda i: planes[i].order)
        plane = planes[best]
        delta = positions[best] - target
        offset = float(np.linalg.norm(delta - float(delta @ normal) * normal))
        iop = plane.orientation
        aligned = abs(float(iop[:3] @ row_dir)) > 0.999 and abs(float(iop[3:] @ col_dir)) > 0.999
        if (int(plane.source.Rows), int(plane.source.Columns)) != (rows, cols) or not aligned:
            raise InternalError(
                f"slice {k} of the mask does not match its source plane's matrix or orientation"
            )
        if offset > in_plane:
            raise InternalError(f"slice {k} of the mask is shifted in plane from its source")
        ordered.append(plane)
    return ordered


def _shared_geometry(ds: Dataset) -> Dataset:
    """A copy of an enhanced source whose Pixel Measures and Plane Orientation are in the shared
    functional groups, where highdicom reads them; many scanners (e.g. Siemens XA) put them in
    every per-frame group instead, which PS3.3 C.7.6.16 equally allows. The copy only feeds
    highdicom: the Segmentation references the source by its UIDs and frame numbers."""
    out = copy.deepcopy(ds)
    per_frame = out.get("PerFrameFunctionalGroupsSequence") or []
    if not out.get("SharedFunctionalGroupsSequence"):
        out.SharedFunctionalGroupsSequence = [Dataset()]
    shared = out.SharedFunctionalGroupsSequence[0]
    for group in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if shared.get(group):
            continue
        items = [item.get(group) for item in per_frame]  # Sequence values
        if not items or not all(items):
            raise InvalidInput(f"an enhanced source instance lacks the {group} functional group")
        if len({str(list(sequence[0])) for sequence in items}) > 1:
            raise UnsupportedInput(
                f"the frames of an enhanced source instance differ in their {group}; a DICOM "
                "Segmentation of it is not supported: ask without the DICOM Segmentation output"
            )
        setattr(shared, group, copy.deepcopy(items[0]))
    return out


def _highdicom_sources(
    planes: Sequence[SourcePlane],
) -> tuple[list[Dataset], list[hd.PlanePositionSequence] | None]:
    """The source images and plane positions for highdicom: classic images one per slice, or
    the one enhanced image whose frames the slices lie on, with each slice's frame position."""
    enhanced = {str(p.source.SOPInstanceUID): p.source for p in planes if p.frame is not None}
    if not enhanced:
        return [p.source for p in planes], None
    if len(enhanced) > 1 or any(p.frame is None for p in planes):
        raise UnsupportedInput(
            f"the mask's slices lie on frames of {len(enhanced)} enhanced instance(s)"
            + (" and on classic images" if any(p.frame is None for p in planes) else "")
            + "; a DICOM Segmentation is made here from one multi-frame source only: ask "
            "without the DICOM Segmentation output"
        )
    [source] = enhanced.values()
    positions = [
        hd.PlanePositionSequence(
            hd.CoordinateSystemNames.PATIENT, image_position=[float(v) for v in p.position]
        )
        for p in planes
    ]
    return [_shared_geometry(source)], positions


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
            "services/gateway/reports/codes.py SEGMENT_CODES"
        )
    category, kind = codes.SEGMENT_CODES[mask.label]
    series = [ds for ds in sources if str(ds.SeriesInstanceUID) == grid.series_instance_uid]
    source_images, plane_positions = _highdicom_sources(order_sources(series, grid))
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
        tracking_uid=uids.uid(),
        tracking_id=truncate(f"{mask.label} ({ctx.pipeline})", 64),
    )
    document = hd.seg.Segmentation(
        source_images=source_images,
        plane_positions=plane_positions,
        pixel_array=(data > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=uids.uid(),
        series_number=series_number,
        sop_instance_uid=uids.uid(),
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
    _derive_dimension_organization(document)
    return document


def _derive_dimension_organization(document: Dataset) -> None:
    """highdicom makes the Dimension Organization UID itself, at random; a seeded build
    (services/gateway/reports/uids.py) derives it like every other UID of the object."""
    if not uids.is_seeded():
        return
    derived = uids.uid()
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in document.get(keyword) or []:
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = derived


def _content_label(label: str) -> str:
    """A Content Label (CS: upper case, digits, space, underscore; 16 characters)."""
    text = "".join(c if c.isalnum() else "_" for c in label.upper())
    return (text or "MASK")[:16]
