"""Small DICOM files built with pydicom for tests: real encodings, invented pixel values.

The brain phantom series is the CLI's sample (``imaging-platform sample-data``), re-exported.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from services.cli.samples import (  # noqa: F401  (re-exported for the tests)
    BRAIN_LAYERS,
    BRAIN_SHAPE,
    BRAIN_SPACING,
    brain_series,
    inside,
    mr_head_series,
    new_instance,
    to_bytes,
)

PATIENT_NAME = "SECRET^PATIENT"
PATIENT_ID = "PID-PRIVATE-12345"


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
    ds = new_instance(ComputedRadiographyImageStorage)
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


def chest_image(pixels: np.ndarray, **kwargs: object) -> bytes:
    return to_bytes(dataset(pixels, **kwargs))  # type: ignore[arg-type]
