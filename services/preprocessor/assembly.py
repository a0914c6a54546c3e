"""Assemble decoded instances into 3-D volumes with their patient geometry.

Pure logic (no gRPC, no pydicom): the input is the decoder's output (DecodedImage), so it can
be tested on files alone.

How images become volumes (:func:`assemble_volumes`)
----------------------------------------------------
1. Every image is expanded into its frames; frame ``f`` of a multi-frame (e.g. Enhanced MR/CT)
   instance is positioned by ``attributes.frame_positions[f]`` (the Plane Position of its
   per-frame functional group). A single-frame instance contributes one slice.
2. Frames are grouped by SeriesInstanceUID. The same instance given twice (same SOP Instance
   UID) is used once (the copy given first), with a warning.
3. Within a series, frames are split into *stacks* of one geometry: the same rows, columns,
   samples per pixel, pixel spacing and ImageOrientationPatient (direction cosines within
   :data:`ORIENTATION_TOLERANCE`). A series that mixes orientations or sizes (a three-plane
   localizer, radial slices, a reformat saved into the acquisition's series) is **split**, one
   volume per geometry, each carrying a warning; it is not refused, because such series are
   common and every part is still a valid stack.
4. Slices of a stack are sorted by the projection of their ImagePositionPatient on the slice
   normal ``n = r x c`` (cross product of the row and column direction cosines), ascending.
   Slices whose planes lie within :data:`POSITION_TOLERANCE_MM` of each other share a
   position:

   * every position occurs exactly ``k > 1`` times (a 4-D series: time points, echoes, or image
     types such as the magnitude and field map of a Philips B0 map): the stack becomes ``k``
     volumes; volume ``j`` (``Volume.repetition == j``) takes the ``j``-th occurrence of each
     position in acquisition order (InstanceNumber, then SOP Instance UID, then frame);
   * otherwise positions that occur more than once are *duplicates*: the first in acquisition
     order is kept, the others are dropped, and a warning names them.
5. Spacing along the normal is the median of the steps between consecutive sorted positions.
   A step above :data:`GAP_FACTOR` times the median is reported as a gap (missing slices); other
   steps that differ from the median by more than :data:`SPACING_TOLERANCE` (relative) are
   reported as non-uniform spacing. When neither is found the spacing is refined to the
   least-squares step, so that the affine reproduces every slice position to within the
   rounding of the positions. Slices that are not stacked along the normal (gantry tilt, shear;
   in-plane drift above :data:`SHEAR_TOLERANCE` per mm) or that do not lie on one line are
   reported too.
6. Slices without ImagePositionPatient, or a stack without ImageOrientationPatient, cannot be
   placed: such a stack is still assembled, ordered by InstanceNumber (then SOP Instance UID,
   then frame) and spaced by SliceThickness (1 mm when absent), with a warning and
   ``Volume.has_positions == False``, so that a caller needing true geometry can refuse it.

Present but corrupt geometry (an ImageOrientationPatient that is not two orthogonal unit
vectors, non-finite positions, a frame-position count that does not match the frames) and an
empty input raise :class:`~services.common.errors.InvalidInput`.

Geometry conventions (DICOM patient coordinates, LPS, millimetres)
------------------------------------------------------------------
``voxels[k, j, i]`` is slice ``k``, row ``j``, column ``i``. Let ``r`` be the row direction
cosine (ImageOrientationPatient[0:3]: the direction in which the column index ``i`` grows along
a row), ``c`` the column direction cosine (ImageOrientationPatient[3:6]: the direction in which
the row index ``j`` grows), ``n = r x c`` the slice normal, ``Δr, Δc = PixelSpacing`` (row
spacing = distance between rows, column spacing = distance between columns) and ``Δs`` the slice
spacing. The 4x4 ``affine`` maps the homogeneous index ``(i, j, k, 1)`` (column, row, slice) to
the patient position of that voxel's centre::

    P(i, j, k) = origin + i * Δc * r + j * Δr * c + k * Δs * (n + t)

``origin`` is the ImagePositionPatient of slice 0 (the centre of its first transmitted voxel).
``t`` (perpendicular to ``n``) is the least-squares in-plane drift of the slice positions per
millimetre along the normal, so that the affine maps ``(0, 0, k)`` to slice ``k``'s
ImagePositionPatient also for a tilted/sheared stack (warned about); for an ordinary stack it
only absorbs the rounding of the positions (``|t| <= SHEAR_TOLERANCE``). ``direction`` is the
3x3 matrix whose columns are the unit vectors ``r, c, n`` (affine index order: column, row, slice
axis), and ``spacing`` is ``(Δs, Δr, Δc)`` in the order of the voxel axes (slice, row, column),
so ``affine[:3, :3] == direction * (Δc, Δr, Δs)`` (each column scaled) up to ``Δs * t``.
Ascending order along ``n`` means, for an axial head-first supine stack, feet to head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from services.common.errors import InvalidInput
from services.common.grids import VolumeIssue
from services.common.images import DecodedImage, ImageAttributes

_Array = NDArray[Any]

# Slice planes closer than this (mm, along the normal) are at the same position.
POSITION_TOLERANCE_MM = 0.01
# Two orientations are the same when every direction cosine differs by at most this.
ORIENTATION_TOLERANCE = 1e-3
# How far an ImageOrientationPatient vector may be from unit length / orthogonality.
_COSINE_TOLERANCE = 0.01
# Pixel spacings (mm) differing by more than this relative amount are different geometries.
_PIXEL_SPACING_TOLERANCE = 1e-3
# A step larger than GAP_FACTOR x the median step is a gap (missing slices).
GAP_FACTOR = 1.5
# A step differing from the median by more than this relative amount is non-uniform spacing.
SPACING_TOLERANCE = 0.01
# In-plane drift of slice positions per mm along the normal above which a stack is sheared
# (1e-3 is about 0.06 degrees of gantry tilt).
SHEAR_TOLERANCE = 1e-3
# A slice further than this (mm) from the line through the stack does not lie on it.
_LINE_TOLERANCE_MM = 0.05
# Warnings name at most this many slices of one kind.
_MAX_LISTED = 3


class VolumeWarning(NamedTuple):
    issue: VolumeIssue
    text: str  # for people: names slices by InstanceNumber and position, never patient data


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of a volume came from (attributes of its instance and frame)."""

    sop_instance_uid: str
    frame_index: int  # 0-based frame within that instance
    instance_number: int
    position: tuple[float, float, float] | None  # ImagePositionPatient (mm), None when unknown
    rescale_slope: float
    rescale_intercept: float


@dataclass(frozen=True, eq=False)
class Volume:
    """One stack of parallel slices with its geometry (see the module docstring).

    ``voxels`` holds stored values (no rescale), shaped (slices, rows, cols) or, for more than
    one sample per pixel, (slices, rows, cols, samples). ``affine`` maps (column, row, slice, 1)
    to patient LPS millimetres; ``spacing`` is (slice, row, column) in mm; ``origin`` is slice
    0's ImagePositionPatient; ``direction`` has the columns row cosine, column cosine, normal.
    ``attributes`` are those of the instance slice 0 came from. ``slices[k]`` says where slice
    ``k`` came from. ``repetition`` numbers the volumes that cover the same positions of one
    4-D stack (0 for an ordinary series). ``has_positions`` is False when the slices could not
    be placed by ImagePositionPatient/ImageOrientationPatient and the geometry is approximate.
    """

    voxels: _Array
    affine: _Array
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: _Array
    series_instance_uid: str
    attributes: ImageAttributes
    slices: tuple[SliceSource, ...]
    notes: tuple[VolumeWarning, ...] = ()
    repetition: int = 0
    has_positions: bool = True

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(note.text for note in self.notes)

    @property
    def issues(self) -> frozenset[VolumeIssue]:
        return frozenset(note.issue for note in self.notes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.voxels.shape)


@dataclass(frozen=True, eq=False)
class _Frame:
    """One frame of one input image, with what sorting and stacking need."""

    image: DecodedImage
    frame_index: int
    position: _Array | None  # (3,) float64
    orientation: _Array | None  # (6,) float64, cosines normalised

    @property
    def attributes(self) -> ImageAttributes:
        return self.image.attributes

    @property
    def order_key(self) -> tuple[int, str, int]:
        """Acquisition order: InstanceNumber, then SOP Instance UID, then frame."""
        a = self.image.attributes
        return (a.instance_number, a.sop_instance_uid, self.frame_index)

    def label(self) -> str:
        """How a warning names this slice (no patient data)."""
        a = self.image.attributes
        text = f"InstanceNumber {a.instance_number}"
        if self.image.pixels.shape[0] > 1:
            text += f" frame {self.frame_index + 1}"
        return text


def assemble_volumes(images: Sequence[DecodedImage]) -> list[Volume]:
    """Group decoded instances by series and geometry and stack them into volumes.

    Returns the volumes ordered by SeriesInstanceUID, then by the acquisition order of each
    stack's first slice, then by repetition; the result does not depend on the input order.
    Raises :class:`InvalidInput` for an empty input or corrupt geometry (module docstring).
    """
    if not images:
        raise InvalidInput("no images to assemble into volumes")
    unique, repeated = _unique_images(images)
    series: dict[str, list[_Frame]] = {}
    for number, image in enumerate(unique, start=1):
        series.setdefault(image.attributes.series_instance_uid, []).extend(_expand(image, number))
    volumes: list[Volume] = []
    for uid in sorted(series):
        frames = series[uid]
        notes: list[VolumeWarning] = []
        if uid in repeated:
            notes.append(VolumeWarning(VolumeIssue.REPEATED_INSTANCES, repeated[uid]))
        if not uid:
            notes.append(
                VolumeWarning(
                    VolumeIssue.NO_SERIES_UID,
                    "images have no SeriesInstanceUID; they were treated as one series",
                )
            )
        stacks = _split_by_geometry(frames)
        for stack in stacks:
            stack_notes = list(notes)
            if len(stacks) > 1:
                stack_notes.append(_split_note(stack, len(stacks)))
            volumes.extend(_stack_volumes(uid, stack, stack_notes))
    return volumes


# --- expanding and grouping ---------------------------------------------------------------


def _expand(image: DecodedImage, number: int) -> list[_Frame]:
    """The frames of one image, validating its geometry attributes."""
    a = image.attributes
    frames = int(image.pixels.shape[0])
    name = f"image {number} (InstanceNumber {a.instance_number})"
    orientation = _orientation(a.image_orientation_patient, name)
    positions: list[_Array | None] = [None] * frames
    if a.frame_positions:
        if len(a.frame_positions) != frames:
            raise InvalidInput(
                f"{name} has {frames} frame(s) but {len(a.frame_positions)} frame position(s); "
                "ImagePositionPatient must be given once per frame"
            )
        for f, value in enumerate(a.frame_positions):
            position = np.asarray(value, dtype=np.float64)
            if position.shape != (3,) or not np.all(np.isfinite(position)):
                raise InvalidInput(
                    f"{name} frame {f + 1} has an invalid ImagePositionPatient {value!r}; "
                    "it must be three finite numbers (mm)"
                )
            positions[f] = position
    return [_Frame(image, f, positions[f], orientation) for f in range(frames)]


def _orientation(value: tuple[float, ...] | None, name: str) -> _Array | None:
    """ImageOrientationPatient as two normalised cosines, None when absent."""
    if value is None or len(value) == 0:
        return None
    cosines = np.asarray(value, dtype=np.float64)
    if cosines.shape != (6,) or not np.all(np.isfinite(cosines)):
        raise InvalidInput(
            f"{name} has an invalid ImageOrientationPatient {tuple(value)!r}; it must be six "
            "finite direction cosines"
        )
    row, col = cosines[:3], cosines[3:]
    norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    if max(abs(norms[0] - 1), abs(norms[1] - 1)) > _COSINE_TOLERANCE or (
        abs(float(row @ col)) > _COSINE_TOLERANCE
    ):
        raise InvalidInput(
            f"{name} has an invalid ImageOrientationPatient {tuple(value)!r}; the row and column "
            "direction cosines must be orthogonal unit vectors"
        )
    normalised: _Array = np.concatenate([row / norms[0], col / norms[1]])
    return normalised


def _unique_images(images: Sequence[DecodedImage]) -> tuple[list[DecodedImage], dict[str, str]]:
    """The images with each SOP Instance UID once (the first given), and a note per series."""
    seen: set[str] = set()
    repeated: dict[str, dict[int, int]] = {}
    unique: list[DecodedImage] = []
    for image in images:
        a = image.attributes
        if a.sop_instance_uid and a.sop_instance_uid in seen:
            counts = repeated.setdefault(a.series_instance_uid, {})
            counts[a.instance_number] = counts.get(a.instance_number, 1) + 1
            continue
        seen.add(a.sop_instance_uid)
        unique.append(image)
    notes = {
        uid: "the same instance was given more than once and used once ("
        + ", ".join(f"InstanceNumber {n}: {c} times" for n, c in sorted(counts.items()))
        + ")"
        for uid, counts in repeated.items()
    }
    return unique, notes


def _geometry_matches(a: _Frame, b: _Frame) -> bool:
    if a.image.pixels.shape[1:] != b.image.pixels.shape[1:]:
        return False
    sa, sb = a.attributes.pixel_spacing, b.attributes.pixel_spacing
    if (sa is None) != (sb is None):
        return False
    if sa is not None and sb is not None and not np.allclose(sa, sb, rtol=_PIXEL_SPACING_TOLERANCE):
        return False
    if (a.orientation is None) != (b.orientation is None):
        return False
    if a.orientation is not None and b.orientation is not None:
        return bool(np.max(np.abs(a.orientation - b.orientation)) <= ORIENTATION_TOLERANCE)
    return True


def _split_by_geometry(frames: list[_Frame]) -> list[list[_Frame]]:
    """Stacks of one geometry, in the acquisition order of their first frame."""
    stacks: list[list[_Frame]] = []
    for frame in sorted(frames, key=lambda f: f.order_key):
        for stack in stacks:
            if _geometry_matches(stack[0], frame):
                stack.append(frame)
                break
        else:
            stacks.append([frame])
    return stacks


def _split_note(stack: list[_Frame], count: int) -> VolumeWarning:
    first = stack[0]
    _, rows, cols, samples = first.image.pixels.shape
    size = f"{rows}x{cols}" + (f"x{samples}" if samples > 1 else "")
    orientation = (
        "no ImageOrientationPatient"
        if first.orientation is None
        else "orientation [" + ", ".join(f"{v:.4g}" for v in first.orientation) + "]"
    )
    spacing = first.attributes.pixel_spacing
    spacing_text = (
        "no PixelSpacing" if spacing is None else f"pixel spacing {spacing[0]:g}/{spacing[1]:g} mm"
    )
    return VolumeWarning(
        VolumeIssue.SPLIT,
        f"the series mixes {count} geometries (orientation, image size or pixel spacing); it was "
        f"split into one volume per geometry; this one has {len(stack)} slice(s) of {size}, "
        f"{orientation}, {spacing_text}",
    )


# --- one stack -> volumes -----------------------------------------------------------------


def _stack_volumes(uid: str, stack: list[_Frame], notes: list[VolumeWarning]) -> list[Volume]:
    """Sort one stack along its normal and build its volume(s)."""
    orientation = stack[0].orientation
    missing = sum(f.position is None for f in stack)
    if orientation is None or missing:
        return [_unplaced_volume(uid, stack, notes, missing)]
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    planes = _planes(stack, normal)
    counts = {len(plane) for plane in planes}
    if len(counts) == 1 and (k := counts.pop()) > 1:
        note = VolumeWarning(
            VolumeIssue.REPETITIONS,
            f"the stack repeats each of its {len(planes)} slice position(s) {k} times (time "
            f"points, echoes or image types); it was returned as {k} volumes in acquisition "
            "order (InstanceNumber, frame)",
        )
        return [
            _placed_volume(uid, [plane[j] for plane in planes], normal, [*notes, note], j)
            for j in range(k)
        ]
    duplicates = [plane for plane in planes if len(plane) > 1]
    if duplicates:
        notes = [*notes, _duplicate_note(duplicates, normal)]
    return [_placed_volume(uid, [plane[0] for plane in planes], normal, notes, 0)]


def _planes(stack: list[_Frame], normal: _Array) -> list[list[_Frame]]:
    """Frames grouped by plane (ascending along the normal), each in acquisition order."""
    ordered = sorted(stack, key=lambda f: (_along(f, normal), f.order_key))
    planes: list[list[_Frame]] = []
    start = math.nan
    for frame in ordered:
        d = _along(frame, normal)
        if planes and d - start <= POSITION_TOLERANCE_MM:
            planes[-1].append(frame)
        else:
            planes.append([frame])
            start = d
    return [sorted(plane, key=lambda f: f.order_key) for plane in planes]


def _along(frame: _Frame, normal: _Array) -> float:
    assert frame.position is not None
    return float(frame.position @ normal)


def _duplicate_note(duplicates: list[list[_Frame]], normal: _Array) -> VolumeWarning:
    extra = sum(len(plane) - 1 for plane in duplicates)
    listed = "; ".join(
        f"{_along(plane[0], normal):.3f} mm: kept {plane[0].label()}, dropped "
        + ", ".join(f.label() for f in plane[1:])
        for plane in duplicates[:_MAX_LISTED]
    )
    more = f"; and {len(duplicates) - _MAX_LISTED} more" if len(duplicates) > _MAX_LISTED else ""
    return VolumeWarning(
        VolumeIssue.DUPLICATES,
        f"{extra} duplicate slice(s) at a position already taken (along the normal at {listed}"
        f"{more}); the first in acquisition order was kept (a 4-D series with an incomplete "
        "repetition also looks like this)",
    )


def _placed_volume(
    uid: str, frames: list[_Frame], normal: _Array, notes: list[VolumeWarning], repetition: int
) -> Volume:
    """A volume whose slices are sorted along the normal and placed by their positions."""
    assert frames[0].orientation is not None
    row, col = frames[0].orientation[:3], frames[0].orientation[3:]
    positions = np.stack([f.position for f in frames if f.position is not None])
    along = positions @ normal
    notes = list(notes)
    if len(frames) > 1:
        steps = np.diff(along)
        step = float(np.median(steps))
        spacing_notes = _spacing_notes(frames, steps, step)
        notes.extend(spacing_notes)
        if not spacing_notes:  # regular: least-squares step, so every slice is reproduced
            index = np.arange(len(frames), dtype=np.float64)
            step = float(index @ (along - along[0])) / float(index @ index)
        drift, line_notes = _drift(positions, along, normal)
        notes.extend(line_notes)
        slice_axis = step * (normal + drift)
    else:
        step = _fallback_step(frames[0], notes, "the volume has one slice")
        slice_axis = step * normal
    return _volume(uid, frames, row, col, normal, slice_axis, step, notes, repetition, True)


def _spacing_notes(frames: list[_Frame], steps: _Array, step: float) -> list[VolumeWarning]:
    """Warnings about gaps and uneven steps; empty when the stack is regular."""
    notes: list[VolumeWarning] = []
    gaps = [int(i) for i in np.flatnonzero(steps > GAP_FACTOR * step)]
    if gaps:
        listed = "; ".join(
            f"{steps[i]:.3f} mm between slice {i} ({frames[i].label()}) and slice {i + 1} "
            f"({frames[i + 1].label()}), about {max(1, round(steps[i] / step) - 1)} slice(s) "
            "missing"
            for i in gaps[:_MAX_LISTED]
        )
        more = f"; and {len(gaps) - _MAX_LISTED} more" if len(gaps) > _MAX_LISTED else ""
        notes.append(
            VolumeWarning(
                VolumeIssue.GAPS,
                f"{len(gaps)} gap(s) in the slice positions where the median step is "
                f"{step:.3f} mm: {listed}{more}; the affine uses the median step, so slices "
                "after a gap are not where it places them",
            )
        )
    regular = np.delete(steps, gaps)
    if np.any(np.abs(regular - step) > SPACING_TOLERANCE * step):
        notes.append(
            VolumeWarning(
                VolumeIssue.UNEVEN_SPACING,
                f"slice spacing is not uniform: steps range from {float(regular.min()):.3f} to "
                f"{float(regular.max()):.3f} mm (median {step:.3f} mm); the affine uses the "
                "median, so it places some slices away from their positions",
            )
        )
    return notes


def _drift(positions: _Array, along: _Array, normal: _Array) -> tuple[_Array, list[VolumeWarning]]:
    """Least-squares in-plane drift per mm along the normal, and a warning when it matters.

    For an ordinary stack the drift is only the rounding of the positions (far below
    SHEAR_TOLERANCE); a larger drift is a tilted/sheared stack.
    """
    depth = along - along[0]
    in_plane = positions - positions[0] - np.outer(depth, normal)
    drift: _Array = (depth @ in_plane) / float(depth @ depth)
    residual = float(np.max(np.linalg.norm(in_plane - np.outer(depth, drift), axis=1)))
    magnitude = float(np.linalg.norm(drift))
    notes: list[VolumeWarning] = []
    if magnitude > SHEAR_TOLERANCE:
        notes.append(
            VolumeWarning(
                VolumeIssue.TILT,
                f"the slices are not stacked along the slice normal but tilted by "
                f"{math.degrees(math.atan(magnitude)):.2f} degrees (gantry tilt or shear); the "
                "affine's slice axis follows the slice positions, direction's third column is "
                "the normal and the slice spacing is the distance between slice planes",
            )
        )
    if residual > _LINE_TOLERANCE_MM:
        notes.append(
            VolumeWarning(
                VolumeIssue.OFF_LINE,
                f"the slice positions do not lie on one line: a slice is {residual:.3f} mm off "
                "the line through the stack; the affine places slices only approximately",
            )
        )
    return drift, notes


def _fallback_step(frame: _Frame, notes: list[VolumeWarning], why: str) -> float:
    thickness = frame.attributes.slice_thickness
    if thickness is not None and math.isfinite(thickness) and thickness > 0:
        notes.append(
            VolumeWarning(
                VolumeIssue.ASSUMED_SPACING,
                f"{why}: the slice spacing is taken from SliceThickness ({thickness:g} mm)",
            )
        )
        return float(thickness)
    notes.append(
        VolumeWarning(
            VolumeIssue.ASSUMED_SPACING,
            f"{why} and no SliceThickness: the slice spacing was set to 1 mm",
        )
    )
    return 1.0


def _unplaced_volume(
    uid: str, stack: list[_Frame], notes: list[VolumeWarning], missing: int
) -> Volume:
    """Fallback when slices cannot be placed: InstanceNumber order, SliceThickness spacing."""
    frames = sorted(stack, key=lambda f: f.order_key)
    first = frames[0]
    if first.orientation is None:
        what = "the slices have no ImageOrientationPatient (direction taken as identity)"
        row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    else:
        what = f"{missing} of {len(frames)} slice(s) have no ImagePositionPatient"
        row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    notes = [
        *notes,
        VolumeWarning(
            VolumeIssue.NO_POSITIONS,
            f"{what}, so they cannot be placed in the patient: they were ordered by "
            "InstanceNumber (then frame) and the geometry is approximate",
        ),
    ]
    step = _fallback_step(first, notes, "slice positions are unknown")
    volume = _volume(uid, frames, row, col, normal, step * normal, step, notes, 0, False)
    return volume


def _volume(
    uid: str,
    frames: list[_Frame],
    row: _Array,
    col: _Array,
    normal: _Array,
    slice_axis: _Array,
    step: float,
    notes: list[VolumeWarning],
    repetition: int,
    has_positions: bool,
) -> Volume:
    first = frames[0]
    notes = list(notes)
    spacing = first.attributes.pixel_spacing
    if spacing is None:
        notes.append(
            VolumeWarning(
                VolumeIssue.ASSUMED_SPACING,
                "the images have no PixelSpacing: rows and columns were taken as 1 mm apart",
            )
        )
        spacing = (1.0, 1.0)
    row_spacing, col_spacing = float(spacing[0]), float(spacing[1])
    origin = first.position if first.position is not None else np.zeros(3)
    affine = np.eye(4)
    affine[:3, 0] = col_spacing * row
    affine[:3, 1] = row_spacing * col
    affine[:3, 2] = slice_axis
    affine[:3, 3] = origin
    voxels = np.stack([f.image.pixels[f.frame_index] for f in frames])
    if voxels.shape[-1] == 1:
        voxels = voxels[..., 0]
    sources = tuple(_source(f) for f in frames)
    if len({(s.rescale_slope, s.rescale_intercept) for s in sources}) > 1:
        notes.append(
            VolumeWarning(
                VolumeIssue.MIXED_RESCALE,
                "RescaleSlope/RescaleIntercept differ between slices: voxels are stored values, "
                "apply each slice's rescale (Volume.slices) before comparing them",
            )
        )
    return Volume(
        voxels=voxels,
        affine=affine,
        spacing=(float(step), row_spacing, col_spacing),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=np.column_stack([row, col, normal]),
        series_instance_uid=uid,
        attributes=first.attributes,
        slices=sources,
        notes=tuple(notes),
        repetition=repetition,
        has_positions=has_positions,
    )


def _source(frame: _Frame) -> SliceSource:
    a = frame.attributes
    position = None
    if frame.position is not None:
        p = frame.position
        position = (float(p[0]), float(p[1]), float(p[2]))
    return SliceSource(
        sop_instance_uid=a.sop_instance_uid,
        frame_index=frame.frame_index,
        instance_number=a.instance_number,
        position=position,
        rescale_slope=a.rescale_slope,
        rescale_intercept=a.rescale_intercept,
    )
