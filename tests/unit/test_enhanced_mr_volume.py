"""The corpus's Enhanced MR brain series (Siemens XA10, four instances of six frames): one
volume with the geometry of its functional groups, refused as a slab by the brain pipeline,
and a DICOM Segmentation of it that dciodvfy accepts.

The files are decoded by the real decoder; what the results are checked against is read
independently with pydicom from the per-frame and shared functional groups (PS3.3 C.7.6.16).
"""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from services.common.errors import OutsideIntendedUse, StudyRefused
from services.common.grids import Segmentation, VolumeGrid, VolumeIssue
from services.common.images import DecodedImage, ImageAttributes
from services.common.pipelines import Coverage, Pipeline, PipelineRegistry
from services.common.results import (
    Assessment,
    CodedConcept,
    Measurement,
    ModelRef,
    OutputOptions,
    StudyResult,
    TriagePriority,
)
from services.decoder.core import decode_instance
from services.gateway.reports import build_outputs
from services.preprocessor.assembly import Volume
from services.preprocessor.volume import prepare_series, series_volume

REPO = Path(__file__).resolve().parents[2]
XA10 = tuple(
    REPO.parent / "shared" / "data" / "dicom" / f"dcm_qa_enh/Siemens/XA10/6_{n}.dcm"
    for n in (1, 2, 3, 4)
)


@pytest.fixture(scope="module")
def brain() -> Pipeline:
    return PipelineRegistry.load(REPO / "pipelines").get("mri_brain_extraction")


@pytest.fixture(scope="module")
def raw() -> list[bytes]:
    missing = [p for p in XA10 if not p.is_file()]
    if missing:
        pytest.fail(f"{missing[0]} not found; shared data must sit beside the repo")
    return [p.read_bytes() for p in XA10]


def _datasets(raw: list[bytes]) -> list[Dataset]:
    return [pydicom.dcmread(BytesIO(data)) for data in raw]


def _group(ds: Dataset, frame: int, sequence: str, keyword: str) -> list[float]:
    """A geometry value of one frame: per-frame functional group, else the shared one."""
    for item in (ds.PerFrameFunctionalGroupsSequence[frame], ds.SharedFunctionalGroupsSequence[0]):
        if sequence in item and keyword in item[sequence][0]:
            element = item[sequence][0][keyword]
            return [float(v) for v in (element.value if element.VM > 1 else [element.value])]
    raise AssertionError(f"{keyword} is in neither functional group of frame {frame + 1}")


def _temporal_position(ds: Dataset, frame: int) -> int:
    content = ds.PerFrameFunctionalGroupsSequence[frame].FrameContentSequence[0]
    return int(content.TemporalPositionIndex)


def _check_geometry(volume: Volume, ds: Dataset) -> None:
    """The volume's grid against ``ds``'s functional groups, frame by frame."""
    frames = int(ds.NumberOfFrames)
    positions = np.array(
        [_group(ds, f, "PlanePositionSequence", "ImagePositionPatient") for f in range(frames)]
    )
    iop = np.array(_group(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"))
    row_spacing, col_spacing = _group(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    [between] = _group(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices")
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort(positions @ normal)  # ascending along the normal, as assembled
    assert [s.frame_index for s in volume.slices] == [int(f) for f in order]
    np.testing.assert_allclose(volume.direction[:, 0], iop[:3], atol=1e-6)
    np.testing.assert_allclose(volume.direction[:, 1], iop[3:], atol=1e-6)
    np.testing.assert_allclose(volume.direction[:, 2], normal, atol=1e-6)
    assert volume.spacing == pytest.approx((between, row_spacing, col_spacing), abs=1e-3)
    for k, frame in enumerate(order):
        placed = volume.affine @ np.array([0.0, 0.0, float(k), 1.0])
        np.testing.assert_allclose(placed[:3], positions[frame], atol=1e-3)
    # Voxel (i, j) of a slice lies i columns along the row cosine, j rows along the column one.
    corner = volume.affine @ np.array([63.0, 63.0, 0.0, 1.0])
    expected = positions[order[0]] + 63 * col_spacing * iop[:3] + 63 * row_spacing * iop[3:]
    np.testing.assert_allclose(corner[:3], expected, atol=1e-3)
    np.testing.assert_array_equal(volume.voxels, ds.pixel_array[order])


def test_the_xa10_fmri_series_is_one_volume_with_its_functional_group_geometry(
    raw: list[bytes], brain: Pipeline
) -> None:
    datasets = _datasets(raw)
    assert len({str(ds.SeriesInstanceUID) for ds in datasets}) == 1
    # What the four instances are: temporal positions 1-4 of one 6-slice EPI slab.
    assert [_temporal_position(ds, 0) for ds in datasets] == [1, 2, 3, 4]
    volume = series_volume([decode_instance(data) for data in raw], brain)
    assert volume.shape == (6, 64, 64)
    first = datasets[0]
    assert {s.sop_instance_uid for s in volume.slices} == {str(first.SOPInstanceUID)}
    assert {_temporal_position(first, s.frame_index) for s in volume.slices} == {1}
    _check_geometry(volume, first)
    assert volume.issues == {VolumeIssue.REPETITIONS}
    [warning] = volume.warnings
    assert "repeats each of its 6 slice position(s) 4 times" in warning
    assert "first repetition in acquisition order (InstanceNumber 1) was analysed" in warning
    assert "the other 3 (InstanceNumber 2, 3, 4) were not" in warning
    # The order the instances arrive in does not matter.
    again = series_volume([decode_instance(data) for data in reversed(raw)], brain)
    np.testing.assert_array_equal(again.affine, volume.affine)
    np.testing.assert_array_equal(again.voxels, volume.voxels)


def test_a_pipeline_that_refuses_repetitions_still_refuses_the_fmri_series(
    raw: list[bytes], brain: Pipeline
) -> None:
    strict = Pipeline.model_validate(
        {**brain.model_dump(), "refuse_volume_issues": ["repetitions"]}
    )
    with pytest.raises(StudyRefused, match="refuses this series: the series repeats"):
        series_volume([decode_instance(data) for data in raw], strict)


def test_the_brain_pipeline_refuses_the_six_slice_slab(raw: list[bytes], brain: Pipeline) -> None:
    with pytest.raises(OutsideIntendedUse) as refused:
        prepare_series([decode_instance(data) for data in raw], brain)
    reason = refused.value.reason
    assert "slab" in reason and "6 slice(s), fewer than the 20 it needs" in reason
    assert "spans 14.4 mm along the slice normal (6 x 2.4 mm), less than the 100 mm" in reason
    assert refused.value.code.name == "FAILED_PRECONDITION"


def _series(slices: int, spacing: float) -> list[DecodedImage]:
    return [
        DecodedImage(
            np.full((1, 4, 4, 1), 100 + k, np.uint16),
            ImageAttributes(
                sop_instance_uid=f"1.2.{k}",
                series_instance_uid="1.2.3",
                modality="MR",
                frame_positions=((0.0, 0.0, k * spacing),),
                image_orientation_patient=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                pixel_spacing=(1.0, 1.0),
                instance_number=k + 1,
            ),
        )
        for k in range(slices)
    ]


def test_coverage_passes_a_whole_head_series_and_names_each_shortfall(brain: Pipeline) -> None:
    # The phantom's geometry (64 slices, 2 mm) passes; 19 slices or 99 mm do not.
    assert prepare_series(_series(64, 2.0), brain).grid is not None
    assert prepare_series(_series(20, 5.0), brain).grid is not None
    with pytest.raises(OutsideIntendedUse, match="19 slice") as few:
        prepare_series(_series(19, 6.0), brain)
    assert "mm along" not in few.value.reason  # 114 mm is enough
    with pytest.raises(OutsideIntendedUse, match=r"spans 99\.0 mm") as short:
        prepare_series(_series(33, 3.0), brain)
    assert "fewer than" not in short.value.reason
    coverage = Coverage(min_slices=20, min_extent_mm=100)
    assert coverage.shortfalls(20, 5.0) == []
    assert len(coverage.shortfalls(6, 2.4)) == 2


def test_coverage_is_for_volume_pipelines_only() -> None:
    spec = PipelineRegistry.load(REPO / "pipelines").get("cxr_pneumonia").model_dump()
    spec["intended_use"]["coverage"] = {"min_slices": 2}
    with pytest.raises(ValueError, match="coverage applies to volume pipelines only"):
        Pipeline.model_validate(spec)


# --- the DICOM Segmentation of an enhanced source ---------------------------------------------


def _dciodvfy(data: bytes, folder: Path, name: str) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not found: install the Debian package dicom3tools")
    path = folder / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _seg_of(raw: list[bytes], brain: Pipeline) -> tuple[bytes, Volume, np.ndarray]:
    volume = series_volume([decode_instance(data) for data in raw], brain)
    slices, rows, cols = volume.voxels.shape
    grid = VolumeGrid(
        volume.series_instance_uid, (slices, rows, cols), volume.spacing, volume.affine
    )
    mask = (volume.voxels > np.median(volume.voxels)).astype(np.uint8)
    assert 0 < mask.sum() < mask.size
    result = StudyResult(
        request_id="r1",
        pipeline=brain.name,
        model=ModelRef(brain.model.name, brain.model.version),
        assessment=Assessment(
            [],
            TriagePriority.ROUTINE,
            [
                Measurement(
                    CodedConcept(code="118565006", display_name="Brain volume"),
                    1.0,
                    "mL",
                    volume.series_instance_uid,
                )
            ],
            [Segmentation("brain", grid, mask)],
        ),
    )
    [seg] = build_outputs(_datasets(raw), result, OutputOptions(dicom_seg=True))
    return seg.data, volume, mask


@pytest.mark.parametrize("instances", [1, 4], ids=["one-instance", "whole-series"])
def test_the_segmentation_of_enhanced_mr_takes_its_geometry_from_the_functional_groups(
    raw: list[bytes], brain: Pipeline, tmp_path: Path, instances: int
) -> None:
    data, volume, mask = _seg_of(raw[:instances], brain)
    assert _dciodvfy(data, tmp_path, "seg") == []
    seg = pydicom.dcmread(BytesIO(data))
    source = _datasets(raw[:1])[0]
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert int(seg.NumberOfFrames) == 6
    pixels = seg.pixel_array
    slice_of = {s.frame_index: k for k, s in enumerate(volume.slices)}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        [reference] = item.DerivationImageSequence[0].SourceImageSequence
        # Every frame references the first temporal position's frame it was drawn on ...
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        frame = int(reference.ReferencedFrameNumber) - 1
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx(
            _group(source, frame, "PlanePositionSequence", "ImagePositionPatient"), abs=1e-4
        )
        # ... and holds the mask of that slice.
        np.testing.assert_array_equal(pixels[index], mask[slice_of[frame]])
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(
        _group(source, 0, "PixelMeasuresSequence", "PixelSpacing")
    )
    assert [
        float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient
    ] == pytest.approx(_group(source, 0, "PlaneOrientationSequence", "ImageOrientationPatient"))
