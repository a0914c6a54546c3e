"""Trilinear resampling, the one shared by volume preprocessing and postprocessing.

Kept apart from the grid types so that services which only pass grids along (the gateway)
do not import scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resample(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resample of (slices, rows, cols) onto ``shape``, corner voxels aligned."""
    if volume.shape == shape:
        return volume.astype(np.float32, copy=False)
    zoom = [target / source for target, source in zip(shape, volume.shape, strict=True)]
    out = ndimage.zoom(volume.astype(np.float32, copy=False), zoom, order=1, grid_mode=False)
    return np.asarray(out, dtype=np.float32)
