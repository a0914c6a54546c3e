"""Volume pipelines: a series of instances -> one model input volume, plus its grid.

The series is assembled along the slice normal (services.preprocessor.assembly), rescaled to
modality values slice by slice, resampled trilinearly to the model's grid and laid out as
NDHWC. The original grid goes along so outputs can be mapped back onto it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from services.common import pipelines as spec
from services.common.errors import InvalidInput, StudyRefused
from services.common.grids import VolumeGrid
from services.common.images import DecodedImage, Preprocessed
from services.common.resampling import resample
from services.preprocessor.assembly import Volume, assemble_volumes

log = logging.getLogger(__name__)


def _modality_values(volume: Volume, voxels: np.ndarray) -> np.ndarray:
    """Rescale slice by slice: slices of one series may carry different slopes."""
    for index, source in enumerate(volume.slices):
        if source.rescale_slope != 1.0 or source.rescale_intercept != 0.0:
            voxels[index] = voxels[index] * source.rescale_slope + source.rescale_intercept
    return voxels


def prepare_volume(images: Sequence[DecodedImage], pipeline: spec.Pipeline) -> Preprocessed:
    """Images of one series -> (1, D, H, W, 1) float32, the series' grid and the assembly's
    warnings (a series with an issue the pipeline refuses is refused)."""
    if not images:
        raise InvalidInput("no images to assemble into a volume")
    volumes = assemble_volumes(images)
    if len(volumes) != 1:
        raise InvalidInput(
            f"pipeline {pipeline.name} takes one volume; the study assembles into "
            f"{len(volumes)} (series or stacks: "
            + ", ".join(f"{v.series_instance_uid or '?'} {v.shape}" for v in volumes)
            + ")"
        )
    [volume] = volumes
    if not volume.has_positions:
        raise InvalidInput(
            "the series lacks ImagePositionPatient/ImageOrientationPatient, so its geometry "
            "(and any volume in mL) would be a guess"
        )
    refused = [n.text for n in volume.notes if n.issue in pipeline.refuse_volume_issues]
    if refused:
        raise StudyRefused(f"pipeline {pipeline.name} refuses this series: " + "; ".join(refused))
    for note in volume.notes:  # the kind only: the texts go back to the caller
        log.warning("volume warning: %s", note.issue.value)
    x = volume.voxels.astype(np.float32)
    if x.ndim != 3:
        raise InvalidInput("volume pipelines take single-channel series")
    for step in pipeline.preprocess:
        if isinstance(step, spec.ModalityLut):
            x = _modality_values(volume, x)
        elif isinstance(step, spec.ResampleVolume):
            x = resample(x, step.shape)
        elif isinstance(step, spec.ScaleByMax):
            peak = float(x.max())
            if peak <= 0:
                raise InvalidInput("the volume has no positive values to scale by")
            x /= np.float32(peak)
        elif isinstance(step, spec.Normalize):
            x = (x - np.float32(step.mean)) / np.float32(step.std)
    grid = VolumeGrid(
        volume.series_instance_uid,
        (int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2])),
        volume.spacing,
        volume.affine,
    )
    batch = np.ascontiguousarray(x[None, :, :, :, None], dtype=np.float32)
    return Preprocessed(batch, [], grid, list(volume.warnings))
