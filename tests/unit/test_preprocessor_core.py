from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidInput
from services.common.images import DecodedImage, ImageAttributes, Lut
from services.common.pipelines import Pipeline, PipelineRegistry
from services.preprocessor.core import preprocess_image, training_batch

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


@pytest.fixture
def cxr() -> Pipeline:
    return PipelineRegistry.load(PIPELINES).get("cxr_pneumonia")


def _image(pixels: np.ndarray, **attrs: object) -> DecodedImage:
    return DecodedImage(pixels[None, :, :, None], ImageAttributes(**attrs))  # type: ignore[arg-type]


def test_training_batch_is_scaled_and_normalised(cxr: Pipeline) -> None:
    images = np.array([np.full((28, 28), v, np.uint8) for v in (0, 255, 51)])
    batch = training_batch(images, cxr)
    assert batch.shape == (3, 1, 28, 28) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[:, 0, 0, 0], [-1.0, 1.0, (51 / 255 - 0.5) / 0.5], atol=1e-6)


def test_monochrome1_is_inverted(cxr: Pipeline) -> None:
    pixels = np.tile(np.arange(28, dtype=np.uint16) * 100, (28, 1))
    mono2 = preprocess_image(_image(pixels, bits_stored=12), cxr)
    mono1 = preprocess_image(
        _image(pixels, bits_stored=12, photometric_interpretation="MONOCHROME1"), cxr
    )
    np.testing.assert_allclose(mono1, -mono2, atol=1e-6)  # 1 - y, then (x - .5) / .5


def test_file_window_and_rescale_are_applied(cxr: Pipeline) -> None:
    pixels = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16).repeat(4, axis=0)
    image = _image(
        pixels,
        bits_stored=12,
        rescale_slope=2.0,
        rescale_intercept=-1000.0,
        window_center=1000.0,
        window_width=2001.0,
    )
    out = preprocess_image(image, cxr)
    # values -1000, 1000, 3000, 5000 through window [0, 2000] -> 0, 0.5, 1, 1 -> (y-.5)/.5
    np.testing.assert_allclose(out[0, 0, 0], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 27, 27], 1.0, atol=1e-6)
    assert out.shape == (1, 28, 28)


def test_non_square_images_are_center_cropped_then_resized(cxr: Pipeline) -> None:
    pixels = np.zeros((56, 112), np.uint8)
    pixels[:, 28:84] = 255  # the centre square is white, the sides black
    out = preprocess_image(_image(pixels, bits_stored=8), cxr)
    assert out.shape == (1, 28, 28)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_wrong_frames_or_channels_are_invalid(cxr: Pipeline) -> None:
    with pytest.raises(InvalidInput, match="single-frame"):
        preprocess_image(DecodedImage(np.zeros((2, 8, 8, 1), np.uint8)), cxr)
    with pytest.raises(InvalidInput, match="1-channel"):
        preprocess_image(DecodedImage(np.zeros((1, 8, 8, 3), np.uint8)), cxr)
    with pytest.raises(InvalidInput, match="uint8"):
        training_batch(np.zeros((1, 28, 28), np.float32), cxr)


def _windowed(pixels: np.ndarray, **attrs: object) -> np.ndarray:
    """The [0, 1] output of the modality LUT and VOI steps alone."""
    pipeline = Pipeline.model_validate(
        {
            "name": "voi_only",
            "preprocess": [{"op": "modality_lut"}, {"op": "voi_window"}],
            "model": {"name": "m", "input": "x", "outputs": ["y"]},
            "postprocess": {
                "findings": [
                    {
                        "concept": {"code": "1", "display_name": "x"},
                        "output": "y",
                        "threshold": 0.5,
                    }
                ]
            },
        }
    )
    return preprocess_image(_image(pixels, **attrs), pipeline)[0]


def test_modality_lut_sequence_replaces_rescale() -> None:
    lut = Lut(first_mapped=2, bits_per_entry=8, data=np.array([0, 50, 100, 200], np.uint16))
    pixels = np.array([[0, 2, 3, 5, 9]], np.uint16)
    out = _windowed(pixels, bits_stored=4, rescale_slope=10.0, modality_lut=lut)
    # The LUT maps 2..5 to 0..200 (clamped outside); the window falls back to the LUT's range.
    np.testing.assert_allclose(out[0], [0, 0, 0.25, 1, 1], atol=1e-6)


def test_voi_lut_sequence_wins_over_the_window() -> None:
    lut = Lut(first_mapped=0, bits_per_entry=8, data=np.array([255, 0, 51], np.uint16))
    out = _windowed(
        np.array([[0, 1, 2]], np.uint8), voi_luts=(lut,), window_center=1.0, window_width=2.0
    )
    np.testing.assert_allclose(out[0], [1.0, 0.0, 0.2], atol=1e-6)


def test_voi_lut_functions() -> None:
    pixels = np.array([[0, 50, 100, 150, 200]], np.uint16)
    common = {"bits_stored": 8, "window_center": 100.0, "window_width": 100.0}
    linear_exact = _windowed(pixels, voi_lut_function="LINEAR_EXACT", **common)
    np.testing.assert_allclose(linear_exact[0], [0, 0, 0.5, 1, 1], atol=1e-6)
    sigmoid = _windowed(pixels, voi_lut_function="SIGMOID", **common)
    expected = 1 / (1 + np.exp(-4 * (pixels[0] - 100.0) / 100.0))
    np.testing.assert_allclose(sigmoid[0], expected, atol=1e-6)
    linear = _windowed(pixels, **common)
    # PS3.3 C.11.2.1.2.1: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped.
    np.testing.assert_allclose(linear[0], np.clip((pixels[0] - 99.5) / 99 + 0.5, 0, 1), atol=1e-6)
    threshold = _windowed(pixels, bits_stored=8, window_center=100.0, window_width=1.0)
    np.testing.assert_array_equal(threshold[0], [0, 0, 1, 1, 1])


def test_a_pipeline_without_a_resize_is_misconfigured_not_the_callers_fault() -> None:
    from services.common.errors import Misconfiguration
    from services.preprocessor.core import prepare_batch

    spec = PipelineRegistry.load(PIPELINES).get("cxr_pneumonia").model_dump()
    spec["preprocess"] = [s for s in spec["preprocess"] if s["op"] != "resize"]
    pipeline = Pipeline.model_validate(spec)
    images = [
        DecodedImage(np.zeros((1, n, n, 1), np.uint8), ImageAttributes(bits_stored=8))
        for n in (8, 9)
    ]
    with pytest.raises(Misconfiguration, match="differently sized inputs"):
        prepare_batch(images, pipeline)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_cropping_before_the_pointwise_steps_changes_nothing(
    cxr: Pipeline, photometric: str
) -> None:
    # prepare() crops first (fewer pixels to convert and window); the declared order, run
    # step by step on the full image, must give the same tensor and region bit for bit.
    from services.preprocessor import core

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4096, (300, 410), dtype=np.uint16)
    image = _image(
        pixels,
        photometric_interpretation=photometric,
        bits_stored=12,
        rescale_slope=0.5,
        rescale_intercept=-20.0,
        window_center=700.0,
        window_width=900.0,
    )
    assert any(type(s).__name__ == "CenterCropSquare" for s in cxr.preprocess)
    x = pixels[:, :, None].astype(np.float32)
    for step in cxr.preprocess:
        x = core._STEPS[type(step)](x, image.attributes, step)
    expected = np.ascontiguousarray(x.transpose(2, 0, 1))

    prepared = core.prepare(image, cxr)
    np.testing.assert_array_equal(prepared.tensor, expected)
    assert (prepared.geometry.region_top, prepared.geometry.region_left) == (0, 55)
    assert (prepared.geometry.region_rows, prepared.geometry.region_cols) == (300, 300)
