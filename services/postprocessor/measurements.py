"""Volume-model outputs -> measurements (mL) and masks on the series' own grid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.common import pipelines as spec
from services.common.errors import InvalidInput
from services.common.grids import Segmentation, VolumeGrid, resample


@dataclass(frozen=True)
class Measurement:
    code: str
    coding_scheme: str
    display_name: str
    value: float
    unit: str
    series_instance_uid: str


def measure(
    outputs: Mapping[str, np.ndarray], grid: VolumeGrid, pipeline: spec.Pipeline
) -> tuple[list[Measurement], list[Segmentation]]:
    """Resample each probability map back to the original grid, threshold, count voxels."""
    measurements, segmentations = [], []
    for rule in pipeline.postprocess.measurements:
        if rule.output not in outputs:
            raise InvalidInput(f"model output {rule.output!r} is missing")
        prob = np.squeeze(np.asarray(outputs[rule.output], dtype=np.float32))
        if prob.ndim != 3:
            shape = outputs[rule.output].shape
            raise InvalidInput(f"model output {rule.output!r} must be one 3-D map, got {shape}")
        mask = (resample(prob, grid.shape) >= rule.threshold).astype(np.uint8)
        measurements.append(
            Measurement(
                rule.code,
                rule.coding_scheme,
                rule.display_name,
                float(mask.sum()) * grid.voxel_ml,
                rule.unit,
                grid.series_instance_uid,
            )
        )
        if rule.segmentation_label:
            segmentations.append(Segmentation(rule.segmentation_label, grid, mask))
    return measurements, segmentations
