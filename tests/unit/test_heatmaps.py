from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from services.common.errors import InvalidInput
from services.common.images import DecodedImage, Geometry, ImageAttributes
from services.common.pipelines import Pipeline
from services.postprocessor.heatmaps import render
from services.preprocessor.core import prepare

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _png(data: bytes) -> np.ndarray:
    image = Image.open(BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def test_heatmap_is_the_original_size_and_only_colours_the_model_region() -> None:
    display = np.full((40, 60), 100, np.uint8)
    geometry = Geometry(40, 60, 0, 10, 40, 40)  # the centre square the model saw
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 5.0
    pixels = _png(render(cam, display, geometry, opacity=0.5))
    assert pixels.shape == (40, 60, 3)
    # Outside the region: the grey image, untouched.
    assert (pixels[:, :10] == 100).all() and (pixels[:, 50:] == 100).all()
    # The CAM's peak (centre of the region) is red-tinted; its zero corners stay grey-ish.
    centre = pixels[20, 30].astype(int)
    assert centre[0] > 150 and centre[2] < 100
    np.testing.assert_array_equal(pixels[0, 10], [100, 100, 100])


def test_negative_or_flat_maps_do_not_break_rendering() -> None:
    display = np.zeros((8, 8), np.uint8)
    flat = _png(render(-np.ones((2, 2)), display, Geometry(8, 8, 0, 0, 8, 8), 0.5))
    assert (flat == 0).all()


def test_bad_shapes_are_reported() -> None:
    with pytest.raises(InvalidInput, match="2-D"):
        render(np.zeros((2, 2, 2)), np.zeros((4, 4), np.uint8), Geometry(4, 4, 0, 0, 4, 4), 0.5)
    with pytest.raises(InvalidInput, match="geometry says 5x4"):
        render(np.zeros((2, 2)), np.zeros((4, 4), np.uint8), Geometry(5, 4, 0, 0, 5, 4), 0.5)


def _heatmap_pipeline() -> Pipeline:
    spec = yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())
    spec["model"]["outputs"] = ["logits", "cam"]
    spec["postprocess"]["findings"][0]["heatmap_output"] = "cam"
    return Pipeline.model_validate(spec)


def test_prepare_tracks_the_crop_and_keeps_the_windowed_display() -> None:
    pixels = np.zeros((1, 30, 50, 1), np.uint8)
    pixels[0, :, 25:] = 255
    prepared = prepare(DecodedImage(pixels, ImageAttributes(bits_stored=8)), _heatmap_pipeline())
    assert prepared.geometry == Geometry(30, 50, 0, 10, 30, 30)
    assert prepared.display is not None and prepared.display.shape == (30, 50)
    np.testing.assert_array_equal(prepared.display, pixels[0, :, :, 0])
    assert prepared.tensor.shape == (1, 28, 28)


def test_pipelines_without_heatmaps_skip_the_display() -> None:
    spec = yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())
    spec["postprocess"]["findings"][0].pop("heatmap_output", None)
    pipeline = Pipeline.model_validate(spec)
    prepared = prepare(DecodedImage(np.zeros((1, 8, 8, 1), np.uint8)), pipeline)
    assert prepared.display is None


def test_heatmap_output_must_be_a_model_output() -> None:
    spec = yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())
    spec["postprocess"]["findings"][0]["heatmap_output"] = "nope"
    with pytest.raises(ValueError, match="unknown output 'nope'"):
        Pipeline.model_validate(spec)
