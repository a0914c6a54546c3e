"""Class activation maps as transparent overlays (RGBA PNG) the size of the image they explain.

The CAM lives in model-input space (e.g. 7x7 for a 28x28 input); it is rectified, scaled to its
own maximum (a relative map: where the model looked, not how sure it is), resized onto the
region of the original image the model saw, coloured, and given an alpha that grows with it.
Viewers draw the PNG over the image; an overlay without the image's own pixels is small and
quick to encode (smooth content), and never re-windows the image on the viewer's behalf.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image

from services.common.errors import ContractViolation
from services.common.images import Geometry

_SMOOTH_PX = 256
# A perceptually ordered blue -> cyan -> yellow -> red ramp (anchor, R, G, B).
_RAMP = np.array(
    [[0.0, 0, 0, 255], [0.35, 0, 255, 255], [0.65, 255, 255, 0], [1.0, 255, 0, 0]],
    dtype=np.float32,
)


def render(cam: np.ndarray, geometry: Geometry, opacity: float) -> bytes:
    """RGBA PNG, rows x cols of the original image; transparent where the map is zero."""
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
    # Smooth at <= 256 px, then repeat pixels up to full size: a 7x7 map has no finer detail,
    # and repeated pixels keep the PNG small and quick to encode (~100 kB for a 2k CR).
    scale = min(1.0, _SMOOTH_PX / max(geometry.region_rows, geometry.region_cols))
    smooth = (
        max(1, round(geometry.region_cols * scale)),
        max(1, round(geometry.region_rows * scale)),
    )
    region = (
        Image.fromarray(rgba, mode="RGBA")
        .resize(smooth, Image.Resampling.BILINEAR)
        .resize((geometry.region_cols, geometry.region_rows), Image.Resampling.NEAREST)
    )
    canvas = Image.new("RGBA", (geometry.cols, geometry.rows), (0, 0, 0, 0))
    canvas.paste(region, (geometry.region_left, geometry.region_top))
    buffer = BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
