"""A synthetic MR head series through the real stack: volume -> deepbrain in Triton -> mL."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import mr_head_series

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import tensors

pytestmark = pytest.mark.integration
SLICES, ROWS, COLS = 64, 96, 96
SPACING = (2.0, 1.5, 1.5)  # slice, row, col (mm): anisotropic, not the model's 128^3 grid
# T1-like nested ellipsoids (fractions of the field of view, intensity): scalp, skull, CSF,
# grey matter, white matter, ventricles, as the model's own phantom test uses at 128^3.
LAYERS = (
    ((0.44, 0.375, 0.344), 0.9),
    ((0.406, 0.344, 0.3125), 0.15),
    ((0.383, 0.32, 0.289), 0.25),
    ((0.367, 0.305, 0.273), 0.55),
    ((0.3125, 0.25, 0.219), 0.75),
    ((0.0625, 0.094, 0.047), 0.2),
)


def _inside(fractions: tuple[float, float, float]) -> np.ndarray:
    axes = [np.linspace(-0.5, 0.5, n) for n in (SLICES, ROWS, COLS)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a, b, c = fractions
    return np.asarray((z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1)


def _phantom() -> np.ndarray:
    volume = np.zeros((SLICES, ROWS, COLS), np.float32)
    for fractions, intensity in LAYERS:
        volume[_inside(fractions)] = intensity
    return np.rint(volume * 1000).astype(np.uint16)


def _series(volume: np.ndarray) -> list[bytes]:
    """Shuffled, as a scanner would send them unordered."""
    order = [int(k) for k in np.random.default_rng(0).permutation(SLICES)]
    return mr_head_series(volume, SPACING, order)


def test_brain_volume_in_ml_matches_the_returned_mask(
    gateway: gateway_pb2_grpc.GatewayStub,
) -> None:
    response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=_series(_phantom())))
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
    head, inner_skull, brain = (_inside(LAYERS[i][0]) for i in (0, 2, 3))
    inside_mask = mask.astype(bool)
    assert inside_mask.sum() > 0
    assert (inside_mask & ~head).sum() == 0
    assert (inside_mask & ~inner_skull).sum() / inside_mask.sum() < 0.01
    dice = 2 * (inside_mask & brain).sum() / (inside_mask.sum() + brain.sum())
    assert dice > 0.85, dice
    assert measurement.value == pytest.approx(brain.sum() * voxel_ml, rel=0.15)
