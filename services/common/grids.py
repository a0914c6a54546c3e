"""Voxel grids shared by the volume preprocessing and postprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class VolumeGrid:
    """A series' own voxel grid, so model outputs can be mapped back onto it."""

    series_instance_uid: str
    shape: tuple[int, int, int]  # slices, rows, cols
    spacing: tuple[float, float, float]  # mm, same order
    affine: np.ndarray  # 4x4, (col, row, slice) index -> patient LPS mm

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class Segmentation:
    """A label mask on a series' own grid."""

    label: str
    grid: VolumeGrid
    mask: np.ndarray  # uint8 (slices, rows, cols), 1 = inside


def resample(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resample of (slices, rows, cols) onto ``shape``, corner voxels aligned."""
    if volume.shape == shape:
        return volume.astype(np.float32, copy=False)
    zoom = [target / source for target, source in zip(shape, volume.shape, strict=True)]
    out = ndimage.zoom(volume.astype(np.float32, copy=False), zoom, order=1, grid_mode=False)
    return np.asarray(out, dtype=np.float32)
