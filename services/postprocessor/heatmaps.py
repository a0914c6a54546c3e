"""Class activation maps drawn over the image they explain, as PNG.

The CAM lives in model-input space (e.g. 7x7 for a 28x28 input); it is rectified, scaled to
its own maximum (a relative map: where the model looked, not how sure it is), resized onto the
region of the original image the model saw, and blended over the windowed image.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image

from services.common.errors import InvalidInput
from services.common.images import Geometry

# A perceptually ordered blue -> cyan -> yellow -> red ramp (anchor, R, G, B).
_RAMP = np.array(
    [[0.0, 0, 0, 255], [0.35, 0, 255, 255], [0.65, 255, 255, 0], [1.0, 255, 0, 0]],
    dtype=np.float32,
)


def _colour(values: np.ndarray) -> np.ndarray:
    return np.stack(
        [np.interp(values, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)], axis=-1
    ).astype(np.float32)


def render(cam: np.ndarray, display: np.ndarray, geometry: Geometry, opacity: float) -> bytes:
    """PNG (RGB, rows x cols of the original image) of ``cam`` over ``display``."""
    cam = np.asarray(cam, dtype=np.float32).squeeze()
    if cam.ndim != 2:
        raise InvalidInput(f"a class activation map must be 2-D, got shape {cam.shape}")
    if display.shape != (geometry.rows, geometry.cols):
        raise InvalidInput(
            f"display image is {display.shape}, geometry says {geometry.rows}x{geometry.cols}"
        )
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    region = np.asarray(
        Image.fromarray(cam, mode="F").resize(
            (geometry.region_cols, geometry.region_rows), Image.Resampling.BILINEAR
        )
    )
    heat = np.zeros(display.shape, np.float32)
    top, left = geometry.region_top, geometry.region_left
    heat[top : top + geometry.region_rows, left : left + geometry.region_cols] = region
    alpha = (np.clip(heat, 0.0, 1.0) * opacity)[..., None]
    grey = display.astype(np.float32)[..., None]
    blended = grey * (1.0 - alpha) + _colour(heat) * alpha
    buffer = BytesIO()
    Image.fromarray(np.rint(blended).astype(np.uint8), mode="RGB").save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()
