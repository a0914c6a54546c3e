"""Sample studies to try the platform on, written by `imaging-platform sample-data`.

- In-population chest radiographs: PneumoniaMNIST test images (children aged 1-5, CC BY 4.0)
  wrapped as DX DICOM with what the chest pipelines check (age, view), so the demo shows the
  model on the population it was trained for beside real adult radiographs it is not for.
- A brain MR phantom: a T1-like head of nested ellipsoids as a 64-slice axial series with real
  geometry, the only whole-head MR series at hand (the corpus's one real brain MR is a 6-slice
  EPI slab, outside the brain pipeline's intended use).
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

LABELS = {0: "normal", 1: "pneumonia"}


def new_instance(sop_class: UID) -> Dataset:
    """An empty instance of ``sop_class`` with its file meta (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file (preamble, meta group), as a modality would write it."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pediatric_chest(pixels: np.ndarray, age: str = "004Y") -> bytes:
    """A DX PA chest instance of 8-bit ``pixels`` for a child of ``age`` (AS, e.g. 004Y)."""
    ds = new_instance(DigitalXRayImageStorageForPresentation)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientAge = "DEMO^CHILD", "DEMO-CHILD", age
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return to_bytes(ds)


def pneumoniamnist_samples(npz: Path) -> list[tuple[str, bytes]]:
    """The first normal and the first pneumonia image of the test split, as named instances."""
    data = np.load(npz)
    images, labels = data["test_images"], data["test_labels"].reshape(-1)
    samples = []
    for label, name in LABELS.items():
        index = int(np.flatnonzero(labels == label)[0])
        samples.append((f"pneumoniamnist-test-{index}-{name}", pediatric_chest(images[index])))
    return samples


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
        ds = new_instance(MRImageStorage)
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


def write_samples(out: Path, medmnist: Path) -> dict[str, list[Path]]:
    """Write the sample studies under ``out``: ``chest/`` (the two PneumoniaMNIST radiographs,
    named by index and label) and ``brain-phantom/`` (the 64-slice series, one file per slice).
    Returns the files written per folder."""
    written: dict[str, list[Path]] = {"chest": [], "brain-phantom": []}
    (out / "chest").mkdir(parents=True, exist_ok=True)
    for name, data in pneumoniamnist_samples(medmnist):
        path = out / "chest" / f"{name}.dcm"
        path.write_bytes(data)
        written["chest"].append(path)
    (out / "brain-phantom").mkdir(parents=True, exist_ok=True)
    for k, data in enumerate(brain_series()):
        path = out / "brain-phantom" / f"slice-{k:03d}.dcm"
        path.write_bytes(data)
        written["brain-phantom"].append(path)
    return written
