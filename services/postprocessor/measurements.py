"""Volume-model outputs -> measurements (mL) and masks on the series' own grid."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from services.common import pipelines as spec
from services.common.errors import ContractViolation
from services.common.grids import Segmentation, VolumeGrid
from services.common.resampling import threshold_resampled
from services.common.results import Measurement


def measure(
    outputs: Mapping[str, np.ndarray], grid: VolumeGrid, pipeline: spec.Pipeline
) -> tuple[list[Measurement], list[Segmentation]]:
    """Resample each probability map back to the original grid, threshold, count voxels."""
    measurements, segmentations = [], []
    for rule in pipeline.postprocess.measurements:
        if rule.output not in outputs:
            raise ContractViolation(f"model output {rule.output!r} is missing")
        prob = np.squeeze(np.asarray(outputs[rule.output], dtype=np.float32))
        if prob.ndim != 3:
            shape = outputs[rule.output].shape
            raise ContractViolation(
                f"model output {rule.output!r} must be one 3-D map, got {shape}"
            )
        mask = threshold_resampled(prob, grid.shape, rule.threshold)
        measurements.append(
            Measurement(
                rule.concept, float(mask.sum()) * grid.voxel_ml, rule.unit, grid.series_instance_uid
            )
        )
        if rule.segmentation_label:
            segmentations.append(Segmentation(rule.segmentation_label, grid, mask))
    return measurements, segmentations
