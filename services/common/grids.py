"""Voxel grids shared by the volume preprocessing and postprocessing (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class VolumeIssue(StrEnum):
    """What a warning is about, so a pipeline can refuse volumes with such a problem."""

    REPEATED_INSTANCES = "repeated_instances"  # the same SOP instance given twice
    NO_SERIES_UID = "no_series_uid"
    SPLIT = "split"  # the series mixes geometries
    REPETITIONS = "repetitions"  # a 4-D stack returned as several volumes
    DUPLICATES = "duplicates"  # slices at a position already taken, dropped
    GAPS = "gaps"  # missing slices
    UNEVEN_SPACING = "uneven_spacing"
    TILT = "tilt"  # gantry tilt or shear
    OFF_LINE = "off_line"  # slice positions not on one line
    NO_POSITIONS = "no_positions"  # slices could not be placed in the patient
    ASSUMED_SPACING = "assumed_spacing"  # a spacing was taken from a fallback
    MIXED_RESCALE = "mixed_rescale"


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
