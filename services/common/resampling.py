"""Trilinear resampling, the one shared by volume preprocessing and postprocessing.

Corner voxels are aligned (scipy's ``zoom(order=1, grid_mode=False)`` mapping), computed as
three separable linear passes in float32. Upsampling a model's 128^3 output back onto a
300 x 512 x 512 series this way takes a fraction of scipy's time, and
:func:`threshold_resampled` does it slab by slab, so a mask never needs the full-size float
volume in memory (314 MB for that series).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_SLAB = 8  # output slices per slab in threshold_resampled


def _positions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index along one axis: the lower source index and the weight of the
    upper one."""
    if n_out == 1 or n_in == 1:
        return np.zeros(n_out, np.intp), np.zeros(n_out, np.float32)
    position = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
    lower = np.minimum(np.floor(position).astype(np.intp), n_in - 2)
    return lower, (position - lower).astype(np.float32)


def _along(x: np.ndarray, axis: int, n_out: int, rows: slice | None = None) -> np.ndarray:
    """Linear resampling of ``x`` along ``axis`` to ``n_out`` (only output ``rows`` if given)."""
    n_in = x.shape[axis]
    if n_in == n_out and rows is None:
        return x.astype(np.float32, copy=False)
    lower, weight = _positions(n_in, n_out)
    if rows is not None:
        lower, weight = lower[rows], weight[rows]
    upper = np.minimum(lower + 1, n_in - 1)
    a = np.take(x, lower, axis=axis).astype(np.float32, copy=False)
    b: np.ndarray = np.take(x, upper, axis=axis).astype(np.float32, copy=False)
    shape = [1] * x.ndim
    shape[axis] = len(weight)
    b -= a
    b *= weight.reshape(shape)
    b += a
    return b


def _order(source: tuple[int, ...], shape: tuple[int, int, int]) -> list[int]:
    """The axis that shrinks the data most goes first, so the intermediates stay small."""
    return sorted(range(3), key=lambda axis: shape[axis] / source[axis])


def resample(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resample of (slices, rows, cols) onto ``shape``, corner voxels aligned."""
    if volume.shape == shape:
        return volume.astype(np.float32, copy=False)
    x = volume
    for axis in _order(volume.shape, shape):
        x = _along(x, axis, shape[axis])
    return np.asarray(x, dtype=np.float32)


def _slabs(n: int) -> Iterator[slice]:
    for start in range(0, n, _SLAB):
        yield slice(start, min(n, start + _SLAB))


def threshold_resampled(
    volume: np.ndarray, shape: tuple[int, int, int], threshold: float
) -> np.ndarray:
    """``resample(volume, shape) >= threshold`` as uint8, a few output slices at a time: the
    same passes in the same order, so the same values, without the full-size float volume."""
    order = _order(volume.shape, shape)
    first = order.index(0)
    x = volume
    for axis in order[:first]:
        x = _along(x, axis, shape[axis])
    mask = np.empty(shape, np.uint8)
    for rows in _slabs(shape[0]):
        slab = _along(x, 0, shape[0], rows)
        for axis in order[first + 1 :]:
            slab = _along(slab, axis, shape[axis])
        np.greater_equal(slab, threshold, out=mask[rows].view(bool))
    return mask
