"""Pipeline preprocessing: stored pixels -> model input, shared by serving and training.

The training scripts call :func:`training_batch` with the same pipeline spec the service
uses, so the model sees bit-for-bit the arithmetic it was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.common import pipelines as spec
from services.common.errors import InvalidInput
from services.common.images import (
    DecodedImage,
    Geometry,
    ImageAttributes,
    Preprocessed,
    join_batches,
)

Frame = np.ndarray  # (rows, cols, samples) float32, owned by the pipeline run (steps may modify it)


@dataclass(frozen=True)
class ModelInput:
    """One image prepared for the model, and where in the image it came from."""

    tensor: np.ndarray  # (channels, height, width) float32
    geometry: Geometry


def _stored_range(attrs: ImageAttributes) -> tuple[float, float]:
    bits = max(1, attrs.bits_stored)
    if attrs.pixel_representation == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _modality_lut(x: Frame, attrs: ImageAttributes, _: spec.ModalityLut) -> Frame:
    if attrs.modality_lut is not None:  # Modality LUT Sequence replaces the rescale
        return attrs.modality_lut.apply(x)
    if attrs.rescale_slope != 1.0:
        x *= np.float32(attrs.rescale_slope)
    if attrs.rescale_intercept != 0.0:
        x += np.float32(attrs.rescale_intercept)
    return x


def _modality_range(attrs: ImageAttributes) -> tuple[float, float]:
    """Range of modality values the file can hold: the window of last resort."""
    if attrs.modality_lut is not None:
        return float(attrs.modality_lut.data.min()), float(attrs.modality_lut.data.max())
    lo, hi = _stored_range(attrs)
    ends = (
        lo * attrs.rescale_slope + attrs.rescale_intercept,
        hi * attrs.rescale_slope + attrs.rescale_intercept,
    )
    return min(ends), max(ends)


def _linear(x: Frame, offset: float, scale: float) -> Frame:
    # In place: these frames are full-resolution radiographs, temporaries cost real time.
    x -= np.float32(offset)
    x *= np.float32(1.0 / scale)
    return x


def _voi_window(x: Frame, attrs: ImageAttributes, step: spec.VoiWindow) -> Frame:
    """DICOM PS3.3 C.11.2: the file's VOI LUT, else its window (with its VOI LUT Function),
    else the step's window, else the full modality range; output scaled to [0, 1]."""
    center, width, function = step.center, step.width, "LINEAR"
    if step.prefer_file_window and attrs.voi_luts:
        lut = attrs.voi_luts[0]
        x = lut.apply(x)
        return np.clip(_linear(x, 0.0, float(2**lut.bits_per_entry - 1)), 0.0, 1.0, out=x)
    if step.prefer_file_window and attrs.window_center is not None and attrs.window_width:
        center, width = attrs.window_center, attrs.window_width
        function = attrs.voi_lut_function or "LINEAR"
    if center is None or width is None:
        lo, hi = _modality_range(attrs)
        x = _linear(x, lo, max(hi - lo, 1e-6))
    elif function == "SIGMOID":
        x = _linear(x, center, width / 4.0)
        np.negative(x, out=x)
        np.exp(x, out=x)
        x += np.float32(1.0)
        np.reciprocal(x, out=x)
    elif function == "LINEAR_EXACT":
        x = _linear(x, center - width / 2.0, width)
    else:  # LINEAR; a width of 1 is a threshold at the centre
        x = _linear(x, center - 0.5 - (width - 1) / 2.0, max(width - 1.0, 1e-6))
    return np.clip(x, 0.0, 1.0, out=x)


def _invert_monochrome1(x: Frame, attrs: ImageAttributes, _: spec.InvertMonochrome1) -> Frame:
    if attrs.photometric_interpretation == "MONOCHROME1":
        np.subtract(np.float32(1.0), x, out=x)
    return x


def _center_crop_square(x: Frame, _: ImageAttributes, __: spec.CenterCropSquare) -> Frame:
    rows, cols = x.shape[:2]
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    return x[top : top + side, left : left + side]


def _resize(x: Frame, _: ImageAttributes, step: spec.Resize) -> Frame:
    if x.shape[:2] == (step.height, step.width):
        return x
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(x[:, :, c]), mode="F").resize(
                (step.width, step.height), Image.Resampling.BOX
            ),
            dtype=np.float32,
        )
        for c in range(x.shape[2])
    ]
    return np.stack(channels, axis=-1)


def _normalize(x: Frame, _: ImageAttributes, step: spec.Normalize) -> Frame:
    x -= np.float32(step.mean)
    x *= np.float32(1.0 / step.std)
    return x


_STEPS: dict[type, Callable[[Frame, ImageAttributes, object], Frame]] = {
    spec.ModalityLut: _modality_lut,  # type: ignore[dict-item]
    spec.VoiWindow: _voi_window,  # type: ignore[dict-item]
    spec.InvertMonochrome1: _invert_monochrome1,  # type: ignore[dict-item]
    spec.CenterCropSquare: _center_crop_square,  # type: ignore[dict-item]
    spec.Resize: _resize,  # type: ignore[dict-item]
    spec.Normalize: _normalize,  # type: ignore[dict-item]
}


# Steps whose output pixel depends on that input pixel alone: they commute with cropping.
_POINTWISE = (spec.ModalityLut, spec.VoiWindow, spec.InvertMonochrome1)


def _centred_square(region: Geometry) -> Geometry:
    side = min(region.region_rows, region.region_cols)
    return Geometry(
        region.rows,
        region.cols,
        region.region_top + (region.region_rows - side) // 2,
        region.region_left + (region.region_cols - side) // 2,
        side,
        side,
    )


def _crop_first(
    pixels: np.ndarray, steps: list[spec.Step]
) -> tuple[np.ndarray, Geometry, list[spec.Step]]:
    """Hoist a centre crop that only pointwise steps precede ahead of them, so the float copy
    and every pointwise pass touch only the pixels the model sees (the same result: a 7 MB
    radiograph loses its margins before, not after, four full-size passes)."""
    rows, cols = pixels.shape[:2]
    region = Geometry(rows, cols, 0, 0, rows, cols)
    for index, step in enumerate(steps):
        if isinstance(step, spec.CenterCropSquare):
            region = _centred_square(region)
            top, left, side = region.region_top, region.region_left, region.region_rows
            cropped = pixels[top : top + side, left : left + side]
            return cropped, region, steps[:index] + steps[index + 1 :]
        if not isinstance(step, _POINTWISE):
            break
    return pixels, region, steps


def prepare(image: DecodedImage, pipeline: spec.Pipeline) -> ModelInput:
    """One single-frame image -> model input (C, H, W) and the region of the image it shows."""
    frames, _, _, samples = image.pixels.shape
    if frames != 1:
        raise InvalidInput(
            f"pipeline {pipeline.name} takes single-frame images; instance "
            f"{image.attributes.sop_instance_uid or '(no UID)'} has {frames} frames"
        )
    if samples != pipeline.model.channels:
        raise InvalidInput(
            f"pipeline {pipeline.name} takes {pipeline.model.channels}-channel images; got "
            f"{samples} samples per pixel ({image.attributes.photometric_interpretation})"
        )
    source, region, steps = _crop_first(image.pixels[0], list(pipeline.preprocess))
    x: Frame = source.astype(np.float32)  # a copy: steps work in place
    for step in steps:
        if isinstance(step, spec.CenterCropSquare):
            region = _centred_square(region)
        x = _STEPS[type(step)](x, image.attributes, step)
    tensor = np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
    return ModelInput(tensor, region)


def preprocess_image(image: DecodedImage, pipeline: spec.Pipeline) -> np.ndarray:
    """One single-frame image -> float32 (channels, rows, cols) model input."""
    return prepare(image, pipeline).tensor


def prepare_batch(images: Sequence[DecodedImage], pipeline: spec.Pipeline) -> Preprocessed:
    """Images -> float32 (N, C, H, W) and the per-image geometry."""
    if not images:
        raise InvalidInput("no images to preprocess")
    prepared = [prepare(image, pipeline) for image in images]
    return Preprocessed(
        join_batches([p.tensor[None] for p in prepared], pipeline.name),
        [p.geometry for p in prepared],
    )


def training_batch(images: np.ndarray, pipeline: spec.Pipeline) -> np.ndarray:
    """8-bit MONOCHROME2 training images (N, H, W) -> the model input the service computes."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InvalidInput(f"training images must be uint8 (N, H, W), got {images.dtype}")
    attrs = ImageAttributes(photometric_interpretation="MONOCHROME2", bits_stored=8)
    decoded = [DecodedImage(image[None, :, :, None], attrs) for image in images]
    return prepare_batch(decoded, pipeline).batch
