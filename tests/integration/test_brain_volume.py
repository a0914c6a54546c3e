"""A synthetic MR head series through the real stack: volume -> deepbrain in Triton -> mL."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import BRAIN_LAYERS, BRAIN_SHAPE, BRAIN_SPACING, brain_series, inside

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import tensors

pytestmark = pytest.mark.integration
SLICES, ROWS, COLS = BRAIN_SHAPE
SPACING = BRAIN_SPACING
LAYERS = BRAIN_LAYERS


def test_brain_volume_in_ml_matches_the_returned_mask(
    gateway: gateway_pb2_grpc.GatewayStub,
) -> None:
    masks = gateway_pb2.OutputOptions(masks=True)
    response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=brain_series(), options=masks))
    assert response.pipeline == "mri_brain_extraction"
    [measurement] = response.measurements
    assert (measurement.display_name, measurement.unit) == ("Brain volume", "mL")
    [segmentation] = response.segmentations
    assert segmentation.label == "brain"
    assert list(segmentation.geometry.shape) == [SLICES, ROWS, COLS]
    assert list(segmentation.geometry.spacing) == pytest.approx(SPACING)
    mask = tensors.from_proto(segmentation.mask)
    assert mask.shape == (SLICES, ROWS, COLS) and set(np.unique(mask)) <= {0, 1}
    voxel_ml = np.prod(SPACING) / 1000
    assert measurement.value == pytest.approx(mask.sum() * voxel_ml, rel=1e-9)
    # The mask is the brain: inside the head, inside the inner skull, and most of the brain.
    head, inner_skull, brain = (inside(LAYERS[i][0]) for i in (0, 2, 3))
    inside_mask = mask.astype(bool)
    assert inside_mask.sum() > 0
    assert (inside_mask & ~head).sum() == 0
    assert (inside_mask & ~inner_skull).sum() / inside_mask.sum() < 0.01
    dice = 2 * (inside_mask & brain).sum() / (inside_mask.sum() + brain.sum())
    assert dice > 0.85, dice
    assert measurement.value == pytest.approx(brain.sum() * voxel_ml, rel=0.15)


def test_masks_come_only_when_asked_for(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=brain_series()))
    [measurement] = response.measurements
    assert measurement.unit == "mL" and measurement.value > 0
    assert list(response.segmentations) == []
