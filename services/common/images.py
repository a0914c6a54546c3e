"""Domain objects shared by the decoder, preprocessor and gateway (no protobuf here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import InvalidInput, Misconfiguration
from services.common.grids import VolumeGrid


@dataclass(frozen=True)
class Lut:
    """A DICOM LUT (PS3.3 C.11): stored value ``first_mapped + i`` maps to ``data[i]``."""

    first_mapped: int
    bits_per_entry: int
    data: np.ndarray
    explanation: str = ""

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Values below the first entry take the first, above the last take the last."""
        index = np.clip(np.rint(values).astype(np.int64) - self.first_mapped, 0, len(self.data) - 1)
        return np.asarray(self.data[index], dtype=np.float32)


@dataclass(frozen=True)
class ImageAttributes:
    """The DICOM attributes preprocessing and pipeline routing need; never patient identity."""

    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    modality: str = ""
    body_part_examined: str = ""
    view_position: str = ""
    transfer_syntax_uid: str = ""
    photometric_interpretation: str = "MONOCHROME2"
    bits_stored: int = 8
    pixel_representation: int = 0
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    pixel_spacing: tuple[float, float] | None = None
    number_of_frames: int = 1
    # ImagePositionPatient of each frame (mm), empty when unknown.
    frame_positions: tuple[tuple[float, float, float], ...] = ()
    image_orientation_patient: tuple[float, ...] | None = None
    slice_thickness: float | None = None
    modality_lut: Lut | None = None
    voi_luts: tuple[Lut, ...] = ()
    voi_lut_function: str = "LINEAR"
    instance_number: int = 0
    series_number: int = 0
    # Keywords of header values that failed their VR check: treated as absent, never quoted.
    invalid: tuple[str, ...] = ()
    # Only for checking a pipeline's intended use: never logged, quoted or returned.
    patient_age_years: float | None = field(default=None, repr=False)
    presentation_intent_type: str = ""


@dataclass(frozen=True)
class DecodedImage:
    """Stored pixel values of one instance, shaped (frames, rows, cols, samples).

    The values are as stored (no rescale, no window): the preprocessor owns every
    transform so that serving and training apply exactly the same arithmetic.
    """

    pixels: np.ndarray
    attributes: ImageAttributes = field(default_factory=ImageAttributes)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4:
            raise InvalidInput(
                f"decoded pixels must be 4-D (frames, rows, cols, samples), got shape "
                f"{self.pixels.shape}"
            )
        if self.pixels.size == 0:
            raise InvalidInput("decoded image has no pixels")


@dataclass(frozen=True)
class SharedPixels:
    """Where one decoded image's stored values wait in the pixel exchange
    (services/common/exchange.py): name, dtype and shape (C order)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SharedImage:
    """A decoded image whose pixels stayed in shared memory: what the gateway routes on and
    forwards to the preprocessor without touching the pixels."""

    pixels: SharedPixels
    attributes: ImageAttributes


Decoded = DecodedImage | SharedImage


def decoded_bytes(image: Decoded) -> int:
    """The memory an image's pixels take, wherever they are (process or shared memory)."""
    if isinstance(image, SharedImage):
        count = int(np.prod(image.pixels.shape, dtype=np.int64))
        return count * np.dtype(image.pixels.dtype).itemsize
    return int(image.pixels.nbytes)


@dataclass(frozen=True)
class Geometry:
    """The region of the original image (rows x cols) that became the model input."""

    rows: int
    cols: int
    region_top: int
    region_left: int
    region_rows: int
    region_cols: int


@dataclass(frozen=True)
class Preprocessed:
    """A model-ready batch with what postprocessing needs to map outputs back: the geometry
    of each row (image pipelines) or the series' grid (volume pipelines)."""

    batch: np.ndarray
    geometries: list[Geometry]
    grid: VolumeGrid | None = None
    # Caveats about the input the caller should see (e.g. missing slices of a volume).
    warnings: list[str] = field(default_factory=list)


def join_batches(batches: Sequence[np.ndarray], pipeline: str) -> np.ndarray:
    """Batches (N_i, ...) of one pipeline -> one (sum N_i, ...) batch. Inputs that differ in
    size mean the pipeline lacks a resize step: misconfigured, whatever the caller sent."""
    shapes = sorted({b.shape[1:] for b in batches})
    if len(shapes) != 1:
        raise Misconfiguration(
            f"pipeline {pipeline} produced differently sized inputs {shapes}; add a resize step"
        )
    return np.concatenate(batches)
