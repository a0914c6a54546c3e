"""Read corpus files into DecodedImage with pydicom alone (imported by module name).

The volume tests build their input here rather than through services.decoder.core, so they
check volume assembly against the files' own geometry attributes, independently of the decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from services.common.images import DecodedImage, ImageAttributes

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT.parent / "shared" / "data" / "dicom"
if not (CORPUS / "MANIFEST.csv").is_file():  # fail loudly rather than collect nothing
    raise FileNotFoundError(f"DICOM test corpus not found at {CORPUS}")

# The 20-slice MR ADC series (oblique, 3 mm): 19 files in the folder plus InstanceNumber 1.
ADC_SERIES = (
    *sorted((CORPUS / "dcmqi/paramaps/701-ADCb500").glob("*.dcm")),
    CORPUS / "dcmqi/paramaps/pm-example-slice.dcm",
)
# Siemens XA10 Enhanced MR fMRI: one series, four instances of six frames at the same positions.
SIEMENS_XA10 = tuple(CORPUS / f"dcm_qa_enh/Siemens/XA10/6_{n}.dcm" for n in (1, 2, 3, 4))
# Philips Achieva Enhanced MR B0 map: 64 frames = magnitude + field map at 32 positions.
PHILIPS_FMAP = CORPUS / "dcm_qa_enh/Philips/IM_0027_fMAP.dcm"
# The same tiny CT acquisition as three classic instances and as one Legacy Converted Enhanced
# CT (PixelMed's MultiFrameImageFactory, other SeriesInstanceUID) with per-frame functional
# groups whose In-Stack Position Numbers count down (3, 2, 1) while the positions go up.
TINY_CT = {
    size: (
        tuple(sorted((CORPUS / f"dcmqi/segmentations/{size}/image").glob("*.dcm"))),
        CORPUS / f"dcmqi/segmentations/{size}/multiframe/mf.dcm",
    )
    for size in ("23x38x3", "24x38x3")
}
# A three-plane localizer: one series with an axial, a sagittal and a coronal slice.
LOCALIZER = tuple(
    CORPUS / f"pydicom-testfiles/dicomdirtests/98892003/MR2/{name}"
    for name in ("4950", "4981", "5011")
)
# Four CT slices of one series: InstanceNumber 18, then 180-182 162.5 mm further (a gap).
GAPPED_CT = tuple(sorted((CORPUS / "pydicom-testfiles/dicomdirtests/77654033/CT2").iterdir()))


def read_dataset(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def decoded_image(path: Path) -> DecodedImage:
    """Stored pixels (frames, rows, cols, samples) and geometry attributes, via pydicom."""
    return image_from_dataset(read_dataset(path))


def image_from_dataset(ds: Dataset) -> DecodedImage:
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    pixels = np.asarray(ds.pixel_array).reshape(frames, int(ds.Rows), int(ds.Columns), samples)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if per_frame:
        positions = tuple(
            _floats(_group(ds, i, "PlanePositionSequence", "ImagePositionPatient"))
            for i in range(frames)
        )
    else:
        positions = (_floats(ds.ImagePositionPatient),) if "ImagePositionPatient" in ds else ()
    orientation = ds.get("ImageOrientationPatient") or _group(
        ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    spacing = ds.get("PixelSpacing") or _group(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    thickness = ds.get("SliceThickness") or _group(ds, 0, "PixelMeasuresSequence", "SliceThickness")
    slope = ds.get("RescaleSlope") or _group(
        ds, 0, "PixelValueTransformationSequence", "RescaleSlope"
    )
    intercept = ds.get("RescaleIntercept") or _group(
        ds, 0, "PixelValueTransformationSequence", "RescaleIntercept"
    )
    attributes = ImageAttributes(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        modality=str(ds.get("Modality") or ""),
        photometric_interpretation=str(ds.PhotometricInterpretation),
        bits_stored=int(ds.BitsStored),
        pixel_representation=int(ds.PixelRepresentation),
        rescale_slope=float(slope) if slope not in (None, "") else 1.0,
        rescale_intercept=float(intercept) if intercept not in (None, "") else 0.0,
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        number_of_frames=frames,
        frame_positions=positions,
        image_orientation_patient=tuple(float(v) for v in orientation) if orientation else None,
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        instance_number=int(ds.get("InstanceNumber") or 0),
        series_number=int(ds.get("SeriesNumber") or 0),
    )
    return DecodedImage(pixels=pixels, attributes=attributes)


def frame_positions(ds: Dataset) -> np.ndarray:
    """(frames, 3) ImagePositionPatient of a classic or enhanced dataset."""
    return np.array(image_from_dataset(ds).attributes.frame_positions, dtype=np.float64)


def _group(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """keyword from the per-frame functional group of `frame`, else the shared group."""
    for groups, index in (
        (ds.get("PerFrameFunctionalGroupsSequence"), frame),
        (ds.get("SharedFunctionalGroupsSequence"), 0),
    ):
        if groups and len(groups) > index and sequence in groups[index]:
            item = groups[index][sequence][0]
            if keyword in item:
                return item[keyword].value
    return None


def _floats(values: Any) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)
