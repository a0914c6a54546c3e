"""In-population demo studies: PneumoniaMNIST test images (children aged 1-5, CC BY 4.0)
wrapped as DX DICOM with what the chest pipelines check (age, view), so the demo shows the
model on the population it was trained for beside real adult radiographs it is not for."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

LABELS = {0: "normal", 1: "pneumonia"}


def pediatric_chest(pixels: np.ndarray, age: str = "004Y") -> bytes:
    """A DX PA chest instance of 8-bit ``pixels`` for a child of ``age`` (AS, e.g. 004Y)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientAge = "DEMO^CHILD", "DEMO-CHILD", age
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pneumoniamnist_samples(npz: Path) -> list[tuple[str, bytes]]:
    """The first normal and the first pneumonia image of the test split, as named instances."""
    data = np.load(npz)
    images, labels = data["test_images"], data["test_labels"].reshape(-1)
    samples = []
    for label, name in LABELS.items():
        index = int(np.flatnonzero(labels == label)[0])
        samples.append((f"pneumoniamnist-test-{index}-{name}", pediatric_chest(images[index])))
    return samples
