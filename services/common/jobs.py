"""What the gateway asks of each inner service: one parameter object per inner RPC request.

Each mirrors its request message field for field, under the same names (but ``grid`` for the
proto's ``volume``, as in Preprocessed); services/common/convert.py maps one to the other. A
field added to a request is added here once, instead of to every signature between the
gateway's protocol, its client, the servicer, the core and the test fakes. No protobuf here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.common.grids import VolumeGrid
from services.common.images import Decoded, Geometry, SharedPixels
from services.common.results import Caveat


@dataclass(frozen=True)
class DecodeJob:
    """One DICOM file to decode (DicomDecoder.Decode): inline bytes, or the file waiting in the
    pixel exchange (``shared_dicom``, then ``dicom`` is empty)."""

    dicom: bytes = b""
    # Leave the decoded pixels in the pixel exchange and return a handle.
    shared_output: bool = False
    shared_dicom: SharedPixels | None = None


@dataclass(frozen=True)
class PreprocessJob:
    """Images to turn into one model input (Preprocessor.Preprocess); pixels may still wait in
    the pixel exchange (SharedImage), for the preprocessor to take."""

    pipeline: str
    images: tuple[Decoded, ...]


@dataclass(frozen=True)
class PostprocessJob:
    """Model outputs to turn into findings (Postprocessor.Postprocess), with what maps them
    back onto the images: each row's geometry (heatmaps) or the series' grid (volumes)."""

    pipeline: str
    # Model outputs by name, batch first; row i belongs to sop_instance_uids[i].
    outputs: Mapping[str, np.ndarray]
    sop_instance_uids: tuple[str, ...]
    geometries: tuple[Geometry, ...] = ()
    grid: VolumeGrid | None = None
    # Draw heatmap overlays / keep the masks of volume measurements (the caller asked).
    heatmaps: bool = False
    masks: bool = False
    # The gateway's intended-use flags: the findings of these images become INDETERMINATE.
    caveats: tuple[Caveat, ...] = ()
