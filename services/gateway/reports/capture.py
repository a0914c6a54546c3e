"""A finding's heatmap as a DICOM Secondary Capture image (RGB) in the source study.

Why Secondary Capture and not a Parametric Map: the heatmap is a class activation map scaled
to its own maximum (where the model looked, not a calibrated quantity), drawn at most 256 px
on the long side for a 2-D radiograph or ultrasound image that has no frame of reference; a
Parametric Map would need real-world values and a spatial registration the map does not have,
and few viewers draw one over the image. An RGB Secondary Capture shows in every viewer and
PACS as what it is: a picture derived from the source image (Source Image Sequence).

The overlay is composited onto the source image itself when its pixels come cheaply (native,
uncompressed, single-frame grayscale pixel data in the given dataset: no codec runs here), and
onto black otherwise.

A PACS shows pixels, often without the header: the finding's status and "not a diagnosis" are
burned into a text band over the top rows (and said again in the Series Description), so the
picture cannot be taken for a positive read or a diagnosis on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from io import BytesIO

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from services.common.errors import InternalError
from services.common.results import Finding, FindingStatus
from services.common.textband import text_band
from services.gateway.reports import uids
from services.gateway.reports._common import Context, header, truncate

SOP_CLASS_UID = str(SecondaryCaptureImageStorage)  # 1.2.840.10008.5.1.4.1.1.7

log = logging.getLogger(__name__)

_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian}
_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z (LPS)


def _overlay(png: bytes) -> np.ndarray:
    try:
        with Image.open(BytesIO(png)) as image:
            return np.asarray(image.convert("RGBA"))
    except (OSError, ValueError) as err:
        raise InternalError(f"a finding's heatmap is not a readable PNG: {err}") from err


def _background(source: Dataset, rows: int, cols: int) -> np.ndarray | None:
    """The source image as 8-bit grayscale of ``rows`` x ``cols``, or None when its pixels are
    not in the dataset in a native encoding (nothing is decoded here)."""
    meta = getattr(source, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in source or syntax not in _NATIVE:
        return None
    if int(source.get("SamplesPerPixel") or 1) != 1 or int(source.get("NumberOfFrames") or 1) != 1:
        return None
    try:
        values = np.asarray(apply_modality_lut(source.pixel_array, source), dtype=np.float32)
    except (AttributeError, KeyError, TypeError, ValueError, NotImplementedError) as err:
        log.debug("heatmap background left black: %s", type(err).__name__)
        return None
    if values.ndim != 2:
        return None
    lo, hi = np.percentile(values[::4, ::4], [1.0, 99.0])
    scaled = np.clip((values - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0) * 255.0
    gray = scaled.astype(np.uint8)
    if str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        gray = 255 - gray
    resized = Image.fromarray(gray, mode="L").resize((cols, rows), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def composite(source: Dataset, png: bytes) -> tuple[np.ndarray, bool]:
    """RGB uint8 pixels of the overlay drawn over the source image (True) or black (False)."""
    rgba = _overlay(png).astype(np.float32)
    rows, cols = rgba.shape[:2]
    gray = _background(source, rows, cols)
    base = np.zeros((rows, cols, 3), np.float32)
    if gray is not None:
        base[...] = gray[..., None]
    alpha = rgba[..., 3:4] / 255.0
    rgb = base * (1.0 - alpha) + rgba[..., :3] * alpha
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), gray is not None


def status_texts(finding: Finding) -> list[str]:
    """What the burned-in band says: the finding, its status, and that it is no diagnosis."""
    status = (finding.status or FindingStatus.NEGATIVE).value
    return [f"{finding.concept.display_name}: {status}", "AI heatmap - not a diagnosis"]


# A smaller picture (a 28 px image gives a 28 px heatmap) is scaled up to this long side
# first: its burned-in text would not fit otherwise.
MIN_SIDE = 256


def burn_in(pixels: np.ndarray, texts: Sequence[str]) -> tuple[np.ndarray, int]:
    """``pixels`` (RGB) with ``texts`` burned into a band over its top rows, and the band's
    height. Over, not above: the picture keeps the image's aspect ratio and, from MIN_SIDE px
    on the long side, its size (the heatmap's)."""
    rows, cols = pixels.shape[:2]
    if max(rows, cols) < MIN_SIDE:
        scale = MIN_SIDE / max(rows, cols)
        size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
        resized = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
        pixels = np.asarray(resized)
    band = text_band(pixels.shape[1], texts)
    rows = min(band.shape[0], pixels.shape[0])
    out = pixels.copy()
    out[:rows] = band[:rows]
    return out, rows


def series_description(finding: Finding) -> str:
    """The status first, so that the 64 characters of LO never cut it off."""
    status = (finding.status or FindingStatus.NEGATIVE).value
    return truncate(f"{status} - not a diagnosis - AI heatmap {finding.concept.display_name}", 64)


def _orientation(source: Dataset) -> list[str]:
    """The source's Patient Orientation, or one derived from its Image Orientation (Patient),
    or none."""
    given = source.get("PatientOrientation")
    if given is not None and not isinstance(given, str) and len(given) == 2:
        return [str(v) for v in given]
    iop = source.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return []
    letters = []
    for direction in (np.array(iop[:3], float), np.array(iop[3:], float)):
        axis = int(np.argmax(np.abs(direction)))
        letters.append(_LETTERS[axis][0 if direction[axis] > 0 else 1])
    return letters


def heatmap_image(
    source: Dataset,
    finding: Finding,
    number: int,
    ctx: Context,
    *,
    series_instance_uid: str,
    series_number: int,
) -> hd.sc.SCImage:
    """Finding ``number``'s heatmap over its image, as an SC image in a new series of the
    source study (one series for all heatmaps of a result)."""
    pixels, over_source = composite(source, finding.heatmap_png)
    pixels, band_rows = burn_in(pixels, status_texts(finding))
    status = finding.status or FindingStatus.NEGATIVE
    orientation = _orientation(source)
    # highdicom wants one letter per axis; the source's own value is copied below.
    placeholder: tuple[str, str] = ("L", "F")
    if len(orientation) == 2 and all(len(v) == 1 for v in orientation):
        placeholder = (orientation[0], orientation[1])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header(source),
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.uid(),
        instance_number=number,
        manufacturer=ctx.manufacturer,
        patient_orientation=placeholder,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        # One series holds a result's heatmaps; every pipeline has one heatmapped finding, so
        # the status this names is the series'.
        series_description=series_description(finding),
        manufacturer_model_name=truncate(ctx.manufacturer, 64),
        software_versions=ctx.software_version,
    )
    # Patient Orientation is Type 2C: the source's value, or empty where it has none.
    sc.PatientOrientation = orientation
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    caveats = "; ".join(f"{c.reason.value}: {c.detail}" for c in finding.caveats)
    sc.DerivationDescription = truncate(
        f"Class activation map of {ctx.algorithm} for {finding.concept.display_name}, drawn "
        f"over {'the source image' if over_source else 'black'}: where the model looked, "
        f"scaled to its own maximum, not how sure it is. Finding status {status.value}, "
        f"probability {finding.probability:.3f}, threshold {finding.threshold:.3f}"
        + (f"; not a decision: {caveats}" if caveats else "")
        + f". The top {band_rows} rows carry burned-in text: the status and that this is "
        "not a diagnosis (no patient identity)",
        1024,
    )
    sc.ImageComments = truncate(
        f"{finding.concept.display_name}: {status.value} (heatmap, {ctx.pipeline})", 10240
    )
    # The band burns in the status, never the patient's identity or a date. Burned In
    # Annotation (PS3.3 General Image Module) says whether the pixels hold "sufficient burned
    # in annotation to identify the patient and date the image was acquired": NO, so that
    # de-identification tools need not blank the picture. Derivation Description names the band.
    sc.BurnedInAnnotation = "NO"
    # Laterality is Type 2C (paired body parts): the source's where it has one; absent for a
    # body part the source names (its laterality is then its own business), empty (unknown)
    # otherwise.
    body_part = str(source.get("BodyPartExamined") or "")
    laterality = str(source.get("Laterality") or "")
    if body_part:
        sc.BodyPartExamined = body_part
    if laterality in ("R", "L"):
        sc.Laterality = laterality
    elif not body_part and "Laterality" not in sc:
        sc.Laterality = ""
    return sc
