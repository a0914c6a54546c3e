from pathlib import Path

import numpy as np
import pytest

from services.common.errors import ContractViolation, InvalidInput, StudyRefused
from services.common.grids import VolumeGrid
from services.common.images import DecodedImage, ImageAttributes
from services.common.jobs import PostprocessJob
from services.common.pipelines import Pipeline, PipelineRegistry
from services.common.resampling import resample
from services.postprocessor.measurements import measure
from services.preprocessor.volume import prepare_volume

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


@pytest.fixture
def brain() -> Pipeline:
    return PipelineRegistry.load(PIPELINES).get("mri_brain_extraction")


def _slices(volume: np.ndarray, spacing: float = 2.0, **attrs: object) -> list[DecodedImage]:
    return [
        DecodedImage(
            volume[k][None, :, :, None],
            ImageAttributes(  # type: ignore[arg-type]
                sop_instance_uid=f"1.2.{k}",
                series_instance_uid="1.2.3",
                modality="MR",
                frame_positions=((0.0, 0.0, k * spacing),),
                image_orientation_patient=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                pixel_spacing=(1.0, 1.0),
                instance_number=k + 1,
                **attrs,
            ),
        )
        for k in range(volume.shape[0])
    ]


def test_series_becomes_one_ndhwc_volume_scaled_to_its_max(brain: Pipeline) -> None:
    volume = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    images = _slices(volume)[::-1]  # any order: assembled along the slice normal
    prepared = prepare_volume(images, brain)
    tensor, grid = prepared.batch, prepared.grid
    assert grid is not None and prepared.warnings == []
    assert tensor.shape == (1, 128, 128, 128, 1) and tensor.dtype == np.float32
    assert tensor.max() == pytest.approx(1.0) and tensor.min() == pytest.approx(0.0)
    assert grid.shape == (4, 6, 8) and grid.spacing == pytest.approx((2.0, 1.0, 1.0))
    # Corners are aligned, so the first and last voxels keep their values.
    assert tensor[0, 0, 0, 0, 0] == pytest.approx(0.0)
    assert tensor[0, -1, -1, -1, 0] == pytest.approx(1.0)


def test_rescale_is_applied_slice_by_slice(brain: Pipeline) -> None:
    volume = np.ones((2, 4, 4), np.uint16)
    images = _slices(volume)
    images[1] = DecodedImage(
        images[1].pixels,
        ImageAttributes(**{**vars(images[1].attributes), "rescale_slope": 3.0}),
    )
    tensor = prepare_volume(images, brain).batch
    assert tensor[0, 0, 0, 0, 0] == pytest.approx(1 / 3)
    assert tensor[0, -1, 0, 0, 0] == pytest.approx(1.0)


def test_volumes_without_geometry_or_with_two_stacks_are_refused(brain: Pipeline) -> None:
    no_position = [
        DecodedImage(
            np.ones((1, 4, 4, 1), np.uint16),
            ImageAttributes(series_instance_uid="9", instance_number=k),
        )
        for k in range(3)
    ]
    with pytest.raises(InvalidInput, match="ImagePositionPatient"):
        prepare_volume(no_position, brain)
    other_series = [
        DecodedImage(
            i.pixels,
            ImageAttributes(
                **{
                    **vars(i.attributes),
                    "series_instance_uid": "4.5.6",
                    "sop_instance_uid": i.attributes.sop_instance_uid + ".9",
                }
            ),
        )
        for i in _slices(np.ones((2, 4, 4), np.uint16))
    ]
    with pytest.raises(InvalidInput, match="assembles into 2"):
        prepare_volume(_slices(np.ones((2, 4, 4), np.uint16)) + other_series, brain)


def _without(images: list[DecodedImage], index: int) -> list[DecodedImage]:
    return images[:index] + images[index + 1 :]


def test_a_series_with_missing_slices_is_refused_when_the_pipeline_says_so(
    brain: Pipeline,
) -> None:
    assert "gaps" in brain.refuse_volume_issues  # the shipped brain pipeline refuses gaps
    images = _without(_slices(np.ones((6, 4, 4), np.uint16)), 3)
    with pytest.raises(StudyRefused, match="refuses this series: 1 gap"):
        prepare_volume(images, brain)


def test_volume_warnings_reach_the_result_when_not_refused(brain: Pipeline) -> None:
    lenient = Pipeline.model_validate({**brain.model_dump(), "refuse_volume_issues": []})
    images = _without(_slices(np.ones((6, 4, 4), np.uint16)), 3)
    prepared = prepare_volume(images, lenient)
    assert len(prepared.warnings) == 1 and "gap(s) in the slice positions" in prepared.warnings[0]


def test_refusing_volume_issues_needs_a_volume_pipeline() -> None:
    spec = PipelineRegistry.load(PIPELINES).get("cxr_pneumonia").model_dump()
    spec["refuse_volume_issues"] = ["gaps"]
    with pytest.raises(ValueError, match="volume pipelines only"):
        Pipeline.model_validate(spec)


def test_measurement_is_the_mask_on_the_original_grid(brain: Pipeline) -> None:
    grid = VolumeGrid("1.2.3", (10, 20, 30), (2.0, 0.5, 0.5), np.eye(4))
    prob = np.zeros((128, 128, 128), np.float32)
    prob[32:96, 32:96, 32:96] = 1.0
    measurements, segmentations = measure({"prob": prob[None, ..., None]}, grid, brain)
    [segmentation] = segmentations
    expected = (resample(prob, grid.shape) >= 0.5).astype(np.uint8)
    np.testing.assert_array_equal(segmentation.mask, expected)
    assert measurements[0].value == pytest.approx(expected.sum() * 2.0 * 0.5 * 0.5 / 1000)
    assert measurements[0].unit == "mL" and measurements[0].series_instance_uid == "1.2.3"
    with pytest.raises(ContractViolation, match="3-D map"):
        measure({"prob": np.zeros((2, 8, 8, 8, 1))}, grid, brain)


def test_volume_steps_are_refused_in_image_pipelines() -> None:
    spec = PipelineRegistry.load(PIPELINES).get("cxr_pneumonia").model_dump()
    spec["preprocess"].append({"op": "scale_by_max"})
    with pytest.raises(ValueError, match="does not apply to image pipelines"):
        Pipeline.model_validate(spec)


@pytest.mark.parametrize("masks", [False, True])
def test_masks_are_returned_only_when_asked_for(brain: Pipeline, masks: bool) -> None:
    from services.postprocessor.core import assess

    grid = VolumeGrid("1.2.3", (10, 20, 30), (2.0, 0.5, 0.5), np.eye(4))
    prob = np.zeros((1, 128, 128, 128, 1), np.float32)
    prob[0, 32:96, 32:96, 32:96] = 1.0
    job = PostprocessJob(brain.name, {"prob": prob}, ("1.2.3",), grid=grid, masks=masks)
    result = assess(job, brain)
    assert len(result.measurements) == 1 and result.measurements[0].value > 0
    assert len(result.segmentations) == (1 if masks else 0)
