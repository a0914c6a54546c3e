"""The routing and preprocessing attributes of one instance; deliberately no patient identity.

Enhanced (multi-frame) objects keep most of these in functional groups: a value is taken
from the top level, else the shared functional groups, else the per-frame groups when every
frame agrees (a single value would be wrong otherwise). Every value is read through
:class:`~services.decoder.header.CheckedHeader`: one that breaks its VR's rules is absent and
named in ``ImageAttributes.invalid``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from services.common.images import ImageAttributes, Lut
from services.decoder.header import CheckedHeader

log = logging.getLogger(__name__)

VOI_LUT_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})


def image_attributes(
    h: CheckedHeader,
    *,
    ts: str,
    photometric: str,
    frames: int,
    bits_stored: int,
    pixel_representation: int,
    little_endian: bool,
) -> ImageAttributes:
    """Attributes of the decoded image (photometric and bits describe the returned values)."""
    slope = first_float(functional(h, "RescaleSlope", "PixelValueTransformationSequence"))
    intercept = first_float(functional(h, "RescaleIntercept", "PixelValueTransformationSequence"))
    spacing = functional(h, "PixelSpacing", "PixelMeasuresSequence")
    if spacing in (None, ""):
        spacing = h.get("ImagerPixelSpacing")
    stored_representation = int_or(h.get("PixelRepresentation"), 0)
    thickness = first_float(functional(h, "SliceThickness", "PixelMeasuresSequence"))
    attributes = ImageAttributes(
        sop_instance_uid=h.text("SOPInstanceUID"),
        sop_class_uid=h.text("SOPClassUID"),
        study_instance_uid=h.text("StudyInstanceUID"),
        series_instance_uid=h.text("SeriesInstanceUID"),
        modality=h.text("Modality"),
        body_part_examined=h.text("BodyPartExamined"),
        view_position=h.text("ViewPosition"),
        transfer_syntax_uid=ts,
        photometric_interpretation=photometric,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        rescale_slope=1.0 if slope is None else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        window_center=first_float(functional(h, "WindowCenter", "FrameVOILUTSequence")),
        window_width=first_float(functional(h, "WindowWidth", "FrameVOILUTSequence")),
        pixel_spacing=positive_pair(spacing),
        number_of_frames=frames,
        frame_positions=frame_positions(h, frames),
        image_orientation_patient=floats(
            functional(h, "ImageOrientationPatient", "PlaneOrientationSequence"), 6
        ),
        slice_thickness=thickness if thickness is not None and thickness > 0 else None,
        modality_lut=modality_lut(h, stored_representation, little_endian),
        voi_luts=voi_luts(h, stored_representation, little_endian),
        voi_lut_function=voi_lut_function(h),
        instance_number=int_or(h.get("InstanceNumber"), 0),
        series_number=int_or(h.get("SeriesNumber"), 0),
        patient_age_years=patient_age_years(h),
        presentation_intent_type=h.text("PresentationIntentType").upper(),
    )
    # Named last: every check above has recorded its failures by now.
    return dataclasses.replace(attributes, invalid=tuple(h.invalid))


# --- LUTs (PS3.3 C.11) -----------------------------------------------------------------


def modality_lut(h: CheckedHeader, pixel_representation: int, little_endian: bool) -> Lut | None:
    """The Modality LUT Sequence's one item; its input is the stored value, so the first
    mapped value is signed exactly when Pixel Representation is 1."""
    sequence = h.get("ModalityLUTSequence")
    if not sequence:
        return None
    return read_lut(h, sequence[0], pixel_representation == 1, little_endian, "Modality LUT")


def voi_luts(h: CheckedHeader, pixel_representation: int, little_endian: bool) -> tuple[Lut, ...]:
    """Every usable VOI LUT Sequence item, in file order (the first is the default view).
    The first mapped value is signed when Pixel Representation is 1 or its VR says SS."""
    luts = []
    for item in h.get("VOILUTSequence") or []:
        vr_signed = "LUTDescriptor" in item and item["LUTDescriptor"].VR == "SS"
        lut = read_lut(h, item, pixel_representation == 1 or vr_signed, little_endian, "VOI LUT")
        if lut is not None:
            luts.append(lut)
    return tuple(luts)


def read_lut(
    h: CheckedHeader, item: Dataset, signed_first: bool, little_endian: bool, what: str
) -> Lut | None:
    """One LUT item; None (logged) when its descriptor or data is missing or malformed.

    LUT Descriptor: number of entries (0 means 65536; always unsigned, even when the VR is
    SS), first stored value mapped (signedness as given), bits per entry.
    """
    descriptor = h.get("LUTDescriptor", item, max_values=3)
    data = h.get("LUTData", item)
    if descriptor is None or data is None or isinstance(descriptor, (str, bytes)):
        if descriptor is not None or data is not None:
            log.warning("ignoring a %s item without a usable descriptor and data", what)
        return None
    values = list(descriptor) if isinstance(descriptor, (MultiValue, list, tuple)) else []
    if len(values) != 3 or not all(isinstance(v, int) for v in values):
        log.warning("ignoring a %s item whose descriptor is %r", what, descriptor)
        return None
    entries = (values[0] & 0xFFFF) or 65536
    first = values[1] & 0xFFFF
    if signed_first and first >= 0x8000:
        first -= 0x10000
    bits = values[2]
    table = _lut_values(item["LUTData"].VR, data, entries, bits, little_endian)
    if table is None or table.size == 0:
        log.warning("ignoring a %s item with no LUT data", what)
        return None
    if table.size != entries:
        log.warning("%s has %d entries; its descriptor says %d", what, table.size, entries)
        table = table[:entries]
    explanation = h.text("LUTExplanation", item)
    return Lut(first_mapped=first, bits_per_entry=bits, data=table, explanation=explanation)


def _lut_values(vr: str, data: Any, entries: int, bits: int, little: bool) -> np.ndarray | None:
    if isinstance(data, (bytes, bytearray)):  # OW (or US read as bytes)
        if bits <= 8 and len(data) == entries:
            return np.frombuffer(data, dtype=np.uint8).copy()
        usable = len(data) // 2 * 2
        return np.frombuffer(data[:usable], dtype="<u2" if little else ">u2").astype(np.uint16)
    if isinstance(data, int):
        data = [data]
    if not isinstance(data, (MultiValue, list, tuple)):
        return None
    if vr == "SS":
        return np.asarray(data, dtype=np.int64).astype(np.int16)
    return (np.asarray(data, dtype=np.int64) & 0xFFFF).astype(np.uint16)


def voi_lut_function(h: CheckedHeader) -> str:
    value = functional(h, "VOILUTFunction", "FrameVOILUTSequence")
    name = str(value or "").strip().upper()
    if name and name not in VOI_LUT_FUNCTIONS:
        log.warning("unknown VOI LUT Function (%d characters); using LINEAR", len(name))
    return name if name in VOI_LUT_FUNCTIONS else "LINEAR"


# --- geometry --------------------------------------------------------------------------


def frame_positions(h: CheckedHeader, frames: int) -> tuple[tuple[float, float, float], ...]:
    """ImagePositionPatient of every frame, or () when not known for every frame."""
    per_frame = h.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) >= frames:
        found = [
            floats(group_value(h, item, "PlanePositionSequence", "ImagePositionPatient"), 3)
            for item in per_frame[:frames]
        ]
        if all(p is not None for p in found):
            return tuple(_triple(p) for p in found if p is not None)
    shared = h.get("SharedFunctionalGroupsSequence")
    if shared:
        position = floats(
            group_value(h, shared[0], "PlanePositionSequence", "ImagePositionPatient"), 3
        )
        if position is not None:
            return (_triple(position),) * frames
    position = floats(h.get("ImagePositionPatient"), 3)
    if position is None:
        return ()
    if frames == 1:
        return (_triple(position),)
    return _grid_positions(h, position, frames)


def _grid_positions(
    h: CheckedHeader, origin: tuple[float, ...], frames: int
) -> tuple[tuple[float, float, float], ...]:
    """Frames of an RT Dose grid: Grid Frame Offset Vector along the slice normal
    (PS3.3 C.8.8.3.2), relative when its first value is 0, else absolute z (axial only)."""
    offsets = floats(h.get("GridFrameOffsetVector"), frames)
    orientation = floats(h.get("ImageOrientationPatient"), 6)
    if offsets is None or orientation is None:
        return ()
    normal = np.cross(orientation[:3], orientation[3:])
    base = np.asarray(origin)
    if offsets[0] != 0.0:  # absolute z positions: only defined for axial grids
        if not np.allclose(np.abs(normal), (0.0, 0.0, 1.0), atol=1e-4):
            return ()
        return tuple((origin[0], origin[1], z) for z in offsets)
    return tuple(_triple(tuple(base + normal * offset)) for offset in offsets)


def _triple(values: tuple[float, ...]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


# --- element access --------------------------------------------------------------------


def functional(h: CheckedHeader, keyword: str, group: str) -> Any:
    """A value from the top level, else the shared functional groups, else the per-frame
    groups when every frame agrees."""
    if (top := h.get(keyword)) not in (None, ""):
        return top
    shared = h.get("SharedFunctionalGroupsSequence")
    if shared and (value := group_value(h, shared[0], group, keyword)) not in (None, ""):
        return value
    per_frame = [
        group_value(h, item, group, keyword)
        for item in h.get("PerFrameFunctionalGroupsSequence") or []
    ]
    distinct = {str(v) for v in per_frame}
    return per_frame[0] if per_frame and len(distinct) == 1 else None


def group_value(h: CheckedHeader, item: Dataset, group: str, keyword: str) -> Any:
    """keyword inside the first item of functional group sequence `group`, if present."""
    sequence = h.get(group, item)
    return h.get(keyword, sequence[0]) if sequence else None


def first_float(value: Any) -> float | None:
    """First value of a possibly multi-valued numeric element; None when absent or invalid."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def floats(value: Any, count: int) -> tuple[float, ...] | None:
    """Exactly `count` finite numbers, or None."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def positive_pair(value: Any) -> tuple[float, float] | None:
    """Row/column spacing in mm, or None when absent, malformed or not positive."""
    pair = floats(value, 2)
    return (pair[0], pair[1]) if pair is not None and pair[0] > 0 and pair[1] > 0 else None


def int_or(value: Any, default: int) -> int:
    """An IS/US value as int ('12', 12, '12.0'); default when absent or not a number."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return default
    return int(number) if math.isfinite(number) and number == int(number) else default


# --- Age, for a pipeline's intended use only (never logged or quoted) --------------------

_AGE_UNITS = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def patient_age_years(h: CheckedHeader) -> float | None:
    """PatientAge (AS, e.g. "064Y", "018M"), else StudyDate minus PatientBirthDate; None when
    neither is usable. Both are checked against their VR first."""
    age = h.text("PatientAge")
    if len(age) == 4 and age[:3].isdigit() and age[3] in _AGE_UNITS:
        return int(age[:3]) / _AGE_UNITS[age[3]]
    born, studied = h.text("PatientBirthDate"), h.text("StudyDate")
    try:
        birth = datetime.date(int(born[:4]), int(born[4:6]), int(born[6:8]))
        study = datetime.date(int(studied[:4]), int(studied[4:6]), int(studied[6:8]))
    except ValueError:  # absent, a range, or not a calendar date
        return None
    if len(born) != 8 or len(studied) != 8 or study < birth:
        return None
    return (study - birth).days / 365.25
