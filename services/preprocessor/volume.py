"""Volume pipelines: a series of instances -> one model input volume, plus its grid.

The series is assembled along the slice normal (services.preprocessor.assembly), rescaled to
modality values slice by slice, resampled trilinearly to the model's grid and laid out as
NDHWC. The original grid goes along so outputs can be mapped back onto it.

A 4-D series (each position repeated: fMRI time points) is analysed as its first repetition,
with a warning; a series spanning less than the pipeline's IntendedUse.coverage is refused.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from services.common import pipelines as spec
from services.common.errors import InvalidInput, OutsideIntendedUse, StudyRefused
from services.common.grids import VolumeGrid, VolumeIssue
from services.common.images import DecodedImage, Preprocessed
from services.common.resampling import resample
from services.preprocessor.assembly import Volume, VolumeWarning, assemble_volumes

log = logging.getLogger(__name__)


def _modality_values(volume: Volume, voxels: np.ndarray) -> np.ndarray:
    """Rescale slice by slice: slices of one series may carry different slopes."""
    for index, source in enumerate(volume.slices):
        if source.rescale_slope != 1.0 or source.rescale_intercept != 0.0:
            voxels[index] = voxels[index] * source.rescale_slope + source.rescale_intercept
    return voxels


def prepare_volume(images: Sequence[DecodedImage], pipeline: spec.Pipeline) -> Preprocessed:
    """Images of one series -> (1, D, H, W, 1) float32, the series' grid and the assembly's
    warnings (a series with an issue the pipeline refuses is refused). The coverage of the
    pipeline's intended use is not checked here but by :func:`prepare_series`."""
    return _model_input(series_volume(images, pipeline), pipeline)


def prepare_series(images: Sequence[DecodedImage], pipeline: spec.Pipeline) -> Preprocessed:
    """What the preprocessor serves: :func:`prepare_volume`, with the pipeline's coverage
    (IntendedUse.coverage) checked on the assembled volume before any resampling."""
    volume = series_volume(images, pipeline)
    check_coverage(volume, pipeline)
    return _model_input(volume, pipeline)


def series_volume(images: Sequence[DecodedImage], pipeline: spec.Pipeline) -> Volume:
    """The one volume a volume pipeline analyses: refused (InvalidInput) when the study holds
    several series or stacks, or cannot be placed; StudyRefused when the assembly reports an
    issue the pipeline refuses.

    A 4-D series (every slice position repeated k times: the temporal positions of an fMRI
    run, echoes, image types) is one acquisition, not k studies: its first repetition in
    acquisition order is analysed, with a warning that says which (see :func:`_first_repetition`).
    A pipeline that must not choose refuses ``repetitions`` (refuse_volume_issues)."""
    if not images:
        raise InvalidInput("no images to assemble into a volume")
    volumes = assemble_volumes(images)
    if len(volumes) > 1 and _repetitions_of_one_stack(volumes):
        volumes = [_first_repetition(volumes)]
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
    return volume


def _repetitions_of_one_stack(volumes: Sequence[Volume]) -> bool:
    """Whether ``volumes`` are the repetitions of one stack of one series (assembly step 4:
    every slice position of the stack occurs once in each)."""
    return (
        len({v.series_instance_uid for v in volumes}) == 1
        and sorted(v.repetition for v in volumes) == list(range(len(volumes)))
        and all(VolumeIssue.REPETITIONS in v.issues for v in volumes)
        and len({v.shape for v in volumes}) == 1
    )


def _first_repetition(volumes: Sequence[Volume]) -> Volume:
    """Repetition 0 (the first occurrence of each position in acquisition order: InstanceNumber,
    SOP Instance UID, frame), its assembly note replaced by one that says what was analysed.

    The first, because it is deterministic and what a reader of the series sees first; for the
    temporal positions of an EPI run (Enhanced MR: Temporal Position Index in the Frame Content
    Sequence, PS3.3 C.7.6.16.2.2) every repetition images the same anatomy."""
    chosen = min(volumes, key=lambda v: v.repetition)
    numbers = sorted({s.instance_number for s in chosen.slices})
    others = sorted({s.instance_number for v in volumes if v is not chosen for s in v.slices})
    note = VolumeWarning(
        VolumeIssue.REPETITIONS,
        f"the series repeats each of its {chosen.shape[0]} slice position(s) {len(volumes)} "
        "times (time points of a dynamic or fMRI run, echoes or image types): the first "
        f"repetition in acquisition order ({_instances(numbers)}) was analysed, the other "
        f"{len(volumes) - 1} ({_instances(others)}) were not",
    )
    notes = tuple(n for n in chosen.notes if n.issue is not VolumeIssue.REPETITIONS)
    return dataclasses.replace(chosen, notes=(*notes, note))


def _instances(numbers: Sequence[int]) -> str:
    """InstanceNumbers for a warning, at most five of them."""
    shown = ", ".join(str(n) for n in numbers[:5])
    more = f" and {len(numbers) - 5} more" if len(numbers) > 5 else ""
    return f"InstanceNumber {shown}{more}"


def check_coverage(volume: Volume, pipeline: spec.Pipeline) -> None:
    """OutsideIntendedUse (FAILED_PRECONDITION) when the assembled volume spans less than the
    pipeline's IntendedUse.coverage along the slice normal: a slab, not the organ it measures."""
    use = pipeline.intended_use
    if use is None or use.coverage is None:
        return
    shortfalls = use.coverage.shortfalls(int(volume.shape[0]), float(volume.spacing[0]))
    if shortfalls:
        raise OutsideIntendedUse(
            f"pipeline {pipeline.name!r}: outside intended use: the series is a slab, not a "
            f"whole-organ volume: {'; '.join(shortfalls)} (intended population: "
            f"{use.population})"
        )


def _model_input(volume: Volume, pipeline: spec.Pipeline) -> Preprocessed:
    """The volume resampled and scaled as the pipeline says, laid out NDHWC, with its grid."""
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
