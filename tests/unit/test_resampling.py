"""The separable trilinear resampling against scipy's zoom, and the slab-wise threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from services.common.resampling import resample, threshold_resampled

SHAPES = [
    ((16, 16, 16), (37, 64, 64)),  # a model's output back onto a series (upsampling)
    ((40, 64, 48), (16, 16, 16)),  # a series onto a model's grid
    ((16, 16, 16), (10, 20, 30)),  # mixed
    ((1, 8, 8), (3, 16, 4)),  # a single slice
    ((5, 7, 9), (5, 7, 9)),  # unchanged
]


@pytest.mark.parametrize(("source", "target"), SHAPES)
def test_resample_equals_scipy_zoom_order_1_corner_aligned(
    source: tuple[int, int, int], target: tuple[int, int, int]
) -> None:
    volume = np.random.default_rng(1).random(source, dtype=np.float32)
    ours = resample(volume, target)
    zoom = [t / s for t, s in zip(target, source, strict=True)]
    # mode="nearest": with the default "constant", a last coordinate computed a hair past the
    # edge reads the zero outside (scipy did that on the 16 -> 30 axis); inside, modes agree.
    expected = (
        ndimage.zoom(volume, zoom, order=1, grid_mode=False, mode="nearest")
        if source != target
        else volume
    )
    assert ours.shape == target and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("source", "target"), SHAPES)
def test_threshold_resampled_is_the_thresholded_resample_bit_for_bit(
    source: tuple[int, int, int], target: tuple[int, int, int]
) -> None:
    volume = np.zeros(source, np.float32)
    volume[source[0] // 4 :, 2:-2, 1:] = 1.0  # edges interpolate to exactly 0.5 and around it
    mask = threshold_resampled(volume, target, 0.5)
    assert mask.dtype == np.uint8 and mask.shape == target
    np.testing.assert_array_equal(mask, (resample(volume, target) >= 0.5).astype(np.uint8))
    assert 0 < int(mask.sum()) < mask.size
