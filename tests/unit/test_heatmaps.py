from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from services.common.errors import ContractViolation
from services.common.images import DecodedImage, Geometry, ImageAttributes
from services.common.pipelines import Pipeline
from services.postprocessor.heatmaps import MAX_SIDE, render
from services.preprocessor.core import prepare

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _png(data: bytes) -> np.ndarray:
    image = Image.open(BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGBA"
    return np.asarray(image)


def test_overlay_is_the_image_size_and_only_covers_the_model_region() -> None:
    geometry = Geometry(40, 60, 0, 10, 40, 40)  # the centre square the model saw
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 5.0
    pixels = _png(render(cam, geometry, opacity=0.5))
    assert pixels.shape == (40, 60, 4)
    # Outside the region: fully transparent.
    assert (pixels[:, :10, 3] == 0).all() and (pixels[:, 50:, 3] == 0).all()
    # The CAM's peak (centre of the region) is red and half opaque; its zero corner is clear.
    centre = pixels[20, 30].astype(int)
    assert centre[0] > 200 and centre[2] < 60 and 100 <= centre[3] <= 128
    assert pixels[0, 10, 3] == 0


def test_negative_or_flat_maps_are_fully_transparent() -> None:
    flat = _png(render(-np.ones((2, 2)), Geometry(8, 8, 0, 0, 8, 8), 0.5))
    assert (flat[..., 3] == 0).all()


def test_large_images_give_small_overlays_of_the_same_shape() -> None:
    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    png = render(cam, Geometry(1955, 1841, 57, 0, 1841, 1841), 0.45)
    pixels = _png(png)
    assert pixels.shape == (MAX_SIDE, round(1841 * MAX_SIDE / 1955), 4)
    assert len(png) < 100_000
    # The region the model saw (rows 57..1897 of 1955) keeps its place in the smaller overlay.
    top = round(57 * MAX_SIDE / 1955)
    assert (pixels[: top - 1, :, 3] == 0).all() and pixels[top + 5, :, 3].any()


def test_bad_shapes_are_reported() -> None:
    with pytest.raises(ContractViolation, match="2-D"):
        render(np.zeros((2, 2, 2)), Geometry(4, 4, 0, 0, 4, 4), 0.5)


def _heatmap_pipeline() -> Pipeline:
    spec = yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())
    spec["model"]["outputs"] = ["logits", "cam", "ood"]
    spec["postprocess"]["findings"][0]["heatmap_output"] = "cam"
    return Pipeline.model_validate(spec)


def test_prepare_tracks_the_crop() -> None:
    pixels = np.zeros((1, 30, 50, 1), np.uint8)
    prepared = prepare(DecodedImage(pixels, ImageAttributes(bits_stored=8)), _heatmap_pipeline())
    assert prepared.geometry == Geometry(30, 50, 0, 10, 30, 30)
    assert prepared.tensor.shape == (1, 28, 28)


def test_heatmap_output_must_be_a_model_output() -> None:
    spec = yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())
    spec["postprocess"]["findings"][0]["heatmap_output"] = "nope"
    with pytest.raises(ValueError, match="unknown output 'nope'"):
        Pipeline.model_validate(spec)
