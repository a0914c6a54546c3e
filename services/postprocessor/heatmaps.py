"""Class activation maps as transparent overlays (RGBA PNG) in the shape of the image they explain.

The CAM lives in model-input space (e.g. 7x7 for a 28x28 input); it is rectified, scaled to its
own maximum (a relative map: where the model looked, not how sure it is), resized onto the
region of the original image the model saw, coloured, and given an alpha that grows with it.
Viewers scale the PNG to the image and draw it over; an overlay without the image's own pixels,
at most MAX_SIDE px on its long side, is small and quick to encode, and never re-windows the
image on the viewer's behalf.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image

from services.common.errors import ContractViolation
from services.common.images import Geometry

MAX_SIDE = 256
# A perceptually ordered blue -> cyan -> yellow -> red ramp (anchor, R, G, B).
_RAMP = np.array(
    [[0.0, 0, 0, 255], [0.35, 0, 255, 255], [0.65, 255, 255, 0], [1.0, 255, 0, 0]],
    dtype=np.float32,
)


def render(cam: np.ndarray, geometry: Geometry, opacity: float) -> bytes:
    """RGBA PNG with the image's aspect ratio: rows x cols of the original image, scaled down
    to at most MAX_SIDE px on the long side; transparent where the map is zero."""
    cam = np.asarray(cam, dtype=np.float32).squeeze()
    if cam.ndim != 2:
        raise ContractViolation(f"a class activation map must be 2-D, got shape {cam.shape}")
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    # Colour at the map's own resolution, then let PIL resize the four channels at once.
    rgba = np.zeros((*cam.shape, 4), np.uint8)
    for channel in range(3):
        rgba[..., channel] = np.rint(np.interp(cam, _RAMP[:, 0], _RAMP[:, channel + 1]))
    rgba[..., 3] = np.rint(np.clip(cam, 0.0, 1.0) * opacity * 255)
    # Drawn at most MAX_SIDE px on the image's long side: a 7x7 map has no finer detail, and a
    # full-size overlay of a 2k radiograph took ~100 ms to encode (16 MB of RGBA); this ~9 ms.
    scale = min(1.0, MAX_SIDE / max(geometry.rows, geometry.cols))
    size = (max(1, round(geometry.cols * scale)), max(1, round(geometry.rows * scale)))
    top, left = round(geometry.region_top * scale), round(geometry.region_left * scale)
    region_size = (
        max(1, min(size[0] - left, round(geometry.region_cols * scale))),
        max(1, min(size[1] - top, round(geometry.region_rows * scale))),
    )
    region = Image.fromarray(rgba, mode="RGBA").resize(region_size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    canvas.paste(region, (left, top))
    buffer = BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
