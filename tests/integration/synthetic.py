"""Small DICOM files built with pydicom for tests: real encodings, invented pixel values."""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

PATIENT_NAME = "SECRET^PATIENT"
PATIENT_ID = "PID-PRIVATE-12345"


def _instance(sop_class: str) -> Dataset:
    """An empty instance of ``sop_class`` with its file meta (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def dataset(
    pixels: np.ndarray | None,
    *,
    bits_stored: int = 8,
    body_part: str = "CHEST",
    modality: str = "CR",
    photometric: str = "MONOCHROME2",
    patient_age: str | None = None,
) -> Dataset:
    """An image inside its pipeline's intended use unless told otherwise: a 4-year-old's PA
    chest radiograph, a 45-year-old's breast ultrasound."""
    ds = _instance(ComputedRadiographyImageStorage)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    if modality in ("CR", "DX"):
        ds.ViewPosition = "PA"
    default_age = {"CR": "004Y", "DX": "004Y", "US": "045Y"}.get(modality)
    if (patient_age or default_age) is not None:
        ds.PatientAge = patient_age or default_age
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def chest_image(pixels: np.ndarray, **kwargs: object) -> bytes:
    return to_bytes(dataset(pixels, **kwargs))  # type: ignore[arg-type]


def mr_head_series(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    order: Sequence[int] | None = None,
    drop: int | None = None,
) -> list[bytes]:
    """An axial MR head series of ``volume`` (slices, rows, cols; uint16) with real geometry,
    centred on the origin; sent in ``order`` (default: slice order), slice ``drop`` left out."""
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    slices, rows, cols = volume.shape
    files = []
    for k in order if order is not None else range(slices):
        if k == drop:
            continue
        ds = _instance(MRImageStorage)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.Modality, ds.BodyPartExamined = "MR", "HEAD"
        ds.PatientName, ds.PatientID = "PHANTOM^HEAD", "PHANTOM-1"
        ds.InstanceNumber = int(k) + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [
            -cols * spacing[2] / 2,
            -rows * spacing[1] / 2,
            -slices * spacing[0] / 2 + float(k) * spacing[0],
        ]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(volume[k], dtype=np.uint16).tobytes()
        files.append(to_bytes(ds))
    return files


# A T1-like head phantom: nested ellipsoids (fractions of the field of view, intensity) for
# scalp, skull, CSF, grey matter, white matter and ventricles, as the brain model's own phantom
# test uses at 128^3; anisotropic spacing, not the model's grid.
BRAIN_SHAPE = (64, 96, 96)
BRAIN_SPACING = (2.0, 1.5, 1.5)  # slice, row, col (mm)
BRAIN_LAYERS = (
    ((0.44, 0.375, 0.344), 0.9),
    ((0.406, 0.344, 0.3125), 0.15),
    ((0.383, 0.32, 0.289), 0.25),
    ((0.367, 0.305, 0.273), 0.55),
    ((0.3125, 0.25, 0.219), 0.75),
    ((0.0625, 0.094, 0.047), 0.2),
)


def inside(fractions: tuple[float, float, float]) -> np.ndarray:
    axes = [np.linspace(-0.5, 0.5, n) for n in BRAIN_SHAPE]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a, b, c = fractions
    return np.asarray((z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1)


def brain_series() -> list[bytes]:
    """The phantom as a 64-slice MR series, shuffled as a scanner would send it unordered."""
    volume = np.zeros(BRAIN_SHAPE, np.float32)
    for fractions, intensity in BRAIN_LAYERS:
        volume[inside(fractions)] = intensity
    order = [int(k) for k in np.random.default_rng(0).permutation(BRAIN_SHAPE[0])]
    return mr_head_series(np.rint(volume * 1000).astype(np.uint16), BRAIN_SPACING, order)
