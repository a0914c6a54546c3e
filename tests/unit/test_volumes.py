"""Tests for services.preprocessor.assembly on real corpus series and synthetic stacks.

Corpus images are built with pydicom in volume_corpus (not through the decoder) so that these
tests check volume assembly against each file's own geometry attributes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import volume_corpus as corpus

from services.common.errors import InvalidInput
from services.common.images import DecodedImage, ImageAttributes
from services.preprocessor.assembly import (
    GAP_FACTOR,
    SHEAR_TOLERANCE,
    Volume,
    assemble_volumes,
)

POSITION_TOLERANCE = 1e-3  # mm: the affine must reproduce every slice position this closely
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


# --- helpers ------------------------------------------------------------------------------


def _read(paths: Sequence[Path]) -> list[DecodedImage]:
    return [corpus.decoded_image(p) for p in paths]


def _voxel_to_patient(volume: Volume, index: tuple[float, float, float]) -> np.ndarray:
    """Patient position of voxel (column, row, slice)."""
    result: np.ndarray = (volume.affine @ np.array([*index, 1.0]))[:3]
    return result


def _slice_positions(volume: Volume) -> np.ndarray:
    assert all(s.position is not None for s in volume.slices)
    return np.array([s.position for s in volume.slices], dtype=np.float64)


def _assert_affine_reproduces_positions(volume: Volume) -> None:
    positions = _slice_positions(volume)
    np.testing.assert_allclose(_voxel_to_patient(volume, (0, 0, 0)), positions[0], atol=1e-9)
    for k, position in enumerate(positions):
        np.testing.assert_allclose(
            _voxel_to_patient(volume, (0, 0, k)), position, atol=POSITION_TOLERANCE, rtol=0
        )


def _assert_same_volume(a: Volume, b: Volume) -> None:
    np.testing.assert_array_equal(a.voxels, b.voxels)
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.direction, b.direction)
    assert a.spacing == b.spacing
    assert a.origin == b.origin
    assert a.slices == b.slices
    assert a.warnings == b.warnings
    assert (a.series_instance_uid, a.repetition) == (b.series_instance_uid, b.repetition)


def _image(
    position: tuple[float, float, float] | None,
    instance: int,
    *,
    series: str = "1.2.826.0.1.3680043.8.498.1",
    orientation: tuple[float, ...] | None = AXIAL,
    rows: int = 4,
    cols: int = 5,
    samples: int = 1,
    pixel_spacing: tuple[float, float] | None = (0.5, 0.8),
    thickness: float | None = 2.0,
    uid: str | None = None,
    slope: float = 1.0,
) -> DecodedImage:
    """A one-frame image whose every pixel holds its InstanceNumber."""
    return DecodedImage(
        pixels=np.full((1, rows, cols, samples), instance, dtype=np.int16),
        attributes=ImageAttributes(
            sop_instance_uid=uid or f"{series}.{instance}",
            series_instance_uid=series,
            modality="CT",
            pixel_spacing=pixel_spacing,
            frame_positions=() if position is None else (position,),
            image_orientation_patient=orientation,
            slice_thickness=thickness,
            instance_number=instance,
            rescale_slope=slope,
        ),
    )


def _axial_series(zs: Sequence[float], **kwargs: Any) -> list[DecodedImage]:
    """Axial slices at the given z (mm), InstanceNumber 1, 2, ... in the given order."""
    return [_image((-10.0, 20.0, float(z)), n, **kwargs) for n, z in enumerate(zs, start=1)]


def _one(volumes: list[Volume]) -> Volume:
    assert len(volumes) == 1, [v.warnings for v in volumes]
    return volumes[0]


def _instances(volume: Volume) -> list[int]:
    return [s.instance_number for s in volume.slices]


def _warning(volume: Volume, text: str) -> str:
    found = [w for w in volume.warnings if text in w]
    assert found, f"no warning containing {text!r} in {volume.warnings}"
    return found[0]


# --- the 20-slice MR series (dcmqi/paramaps: oblique ADC map, 3 mm) --------------------------


@pytest.fixture(scope="module")
def adc_images() -> list[DecodedImage]:
    images = _read(corpus.ADC_SERIES)
    assert len(images) == 20
    assert len({i.attributes.series_instance_uid for i in images}) == 1
    return images


@pytest.fixture(scope="module")
def adc_volume(adc_images: list[DecodedImage]) -> Volume:
    return _one(assemble_volumes(adc_images))


def test_adc_series_becomes_one_volume_sorted_along_the_normal(adc_volume: Volume) -> None:
    assert adc_volume.shape == (20, 256, 256)
    assert adc_volume.warnings == ()
    assert adc_volume.has_positions
    # File names are not in InstanceNumber order (000004.dcm is 6, 000006.dcm is 5).
    assert _instances(adc_volume) == list(range(1, 21))
    normal = adc_volume.direction[:, 2]
    along = _slice_positions(adc_volume) @ normal
    assert np.all(np.diff(along) > 2.9)


def test_adc_voxels_are_the_files_pixels_in_slice_order(adc_volume: Volume) -> None:
    by_instance = {
        int(ds.InstanceNumber): ds.pixel_array
        for ds in (corpus.read_dataset(p) for p in corpus.ADC_SERIES)
    }
    for k, source in enumerate(adc_volume.slices):
        np.testing.assert_array_equal(adc_volume.voxels[k], by_instance[source.instance_number])
    assert adc_volume.voxels.dtype == np.int16
    assert adc_volume.attributes.instance_number == 1


def test_adc_affine_maps_voxels_to_patient_positions(adc_volume: Volume) -> None:
    _assert_affine_reproduces_positions(adc_volume)
    ds = corpus.read_dataset(corpus.CORPUS / "dcmqi/paramaps/pm-example-slice.dcm")
    iop = np.array(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    ipp = np.array(ds.ImagePositionPatient, dtype=np.float64)
    assert adc_volume.origin == tuple(ipp)
    # Column index i moves along the row cosine by the column spacing, row index j along the
    # column cosine by the row spacing (PS3.3 C.7.6.2.1.1).
    for i, j in ((1, 0), (0, 1), (255, 0), (0, 255), (17, 203)):
        expected = ipp + i * col_spacing * iop[:3] + j * row_spacing * iop[3:]
        np.testing.assert_allclose(_voxel_to_patient(adc_volume, (i, j, 0)), expected, atol=1e-4)


def test_adc_spacing_and_direction(adc_volume: Volume) -> None:
    ds = corpus.read_dataset(corpus.ADC_SERIES[0])
    slice_step = float(ds.SpacingBetweenSlices)
    assert slice_step == float(ds.SliceThickness) == 3.0
    assert adc_volume.spacing[1:] == tuple(float(v) for v in ds.PixelSpacing)
    assert adc_volume.spacing[0] == pytest.approx(slice_step, abs=1e-3)
    steps = np.linalg.norm(np.diff(_slice_positions(adc_volume), axis=0), axis=1)
    assert adc_volume.spacing[0] == pytest.approx(float(np.median(steps)), abs=1e-3)
    direction = adc_volume.direction
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-5)
    assert np.linalg.det(direction) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(direction[:, 2], np.cross(direction[:, 0], direction[:, 1]))
    scaled = direction * np.array(adc_volume.spacing[::-1])
    np.testing.assert_allclose(adc_volume.affine[:3, :3], scaled, atol=adc_volume.spacing[0] * 1e-3)
    np.testing.assert_array_equal(adc_volume.affine[3], [0, 0, 0, 1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_shuffled_input_gives_the_same_volume(
    adc_images: list[DecodedImage], adc_volume: Volume, seed: int
) -> None:
    shuffled = list(adc_images)
    random.Random(seed).shuffle(shuffled)
    _assert_same_volume(_one(assemble_volumes(shuffled)), adc_volume)


# --- Enhanced multi-frame: volume from the per-frame functional groups ---------------------


@pytest.mark.parametrize("size", sorted(corpus.TINY_CT))
def test_enhanced_volume_equals_the_classic_series(size: str) -> None:
    classic_paths, enhanced_path = corpus.TINY_CT[size]
    assert len(classic_paths) == 3
    classic = _one(assemble_volumes(_read(classic_paths)))
    enhanced = _one(assemble_volumes([corpus.decoded_image(enhanced_path)]))
    assert enhanced.attributes.number_of_frames == 3
    assert classic.warnings == enhanced.warnings == ()
    np.testing.assert_array_equal(enhanced.voxels, classic.voxels)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-9)
    np.testing.assert_allclose(enhanced.direction, classic.direction, atol=1e-12)
    assert enhanced.spacing == pytest.approx(classic.spacing)
    assert enhanced.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert enhanced.origin == classic.origin
    _assert_affine_reproduces_positions(enhanced)
    # Both forms given together are two series and give the same two volumes.
    both = assemble_volumes([*_read(classic_paths), corpus.decoded_image(enhanced_path)])
    assert len(both) == 2
    np.testing.assert_array_equal(both[0].voxels, both[1].voxels)


def test_siemens_enhanced_fmri_gives_one_volume_per_instance() -> None:
    datasets = [corpus.read_dataset(p) for p in corpus.SIEMENS_XA10]
    volumes = assemble_volumes([corpus.image_from_dataset(ds) for ds in datasets])
    assert [v.repetition for v in volumes] == [0, 1, 2, 3]
    for volume, ds in zip(volumes, datasets, strict=True):
        assert volume.shape == (6, 64, 64)
        assert {s.sop_instance_uid for s in volume.slices} == {str(ds.SOPInstanceUID)}
        assert [s.frame_index for s in volume.slices] == list(range(6))
        np.testing.assert_array_equal(volume.voxels, ds.pixel_array)
        assert volume.spacing == pytest.approx((2.4, 3.375, 3.375), abs=1e-6)
        np.testing.assert_allclose(_slice_positions(volume), corpus.frame_positions(ds))
        _assert_affine_reproduces_positions(volume)
        _warning(volume, "repeats each of its 6 slice position(s) 4 times")
    shuffled = [corpus.image_from_dataset(ds) for ds in reversed(datasets)]
    for again, volume in zip(assemble_volumes(shuffled), volumes, strict=True):
        _assert_same_volume(again, volume)


def test_philips_field_map_splits_magnitude_and_map() -> None:
    ds = corpus.read_dataset(corpus.PHILIPS_FMAP)
    magnitude, field_map = assemble_volumes([corpus.image_from_dataset(ds)])
    positions = corpus.frame_positions(ds)
    for volume, frames in ((magnitude, range(32)), (field_map, range(32, 64))):
        assert volume.shape == (32, 64, 64)
        assert [s.frame_index for s in volume.slices] == list(frames)
        np.testing.assert_array_equal(volume.voxels, ds.pixel_array[frames.start : frames.stop])
        np.testing.assert_allclose(_slice_positions(volume), positions[frames.start : frames.stop])
        assert volume.spacing == pytest.approx((4.0, 4.0, 4.0), abs=1e-6)
        _assert_affine_reproduces_positions(volume)
        _warning(volume, "repeats each of its 32 slice position(s) 2 times")
    assert (magnitude.repetition, field_map.repetition) == (0, 1)


# --- other real series ----------------------------------------------------------------------


def test_three_plane_localizer_is_split_by_orientation() -> None:
    volumes = assemble_volumes(_read(corpus.LOCALIZER))
    assert len(volumes) == 3
    normals = {tuple(np.round(v.direction[:, 2]).astype(int)) for v in volumes}
    assert len(normals) == 3  # axial, sagittal and coronal
    for volume in volumes:
        assert volume.shape == (1, 16, 16)
        _warning(volume, "the series mixes 3 geometries")
        _warning(volume, "one slice: the slice spacing is taken from SliceThickness (10 mm)")
        assert volume.spacing[0] == 10.0


def test_real_gap_is_reported() -> None:
    volume = _one(assemble_volumes(_read(corpus.GAPPED_CT)))
    assert _instances(volume) == [18, 180, 181, 182]
    assert volume.spacing[0] == pytest.approx(1.25, abs=1e-4)
    message = _warning(volume, "1 gap(s)")
    assert "between slice 0 (InstanceNumber 18) and slice 1 (InstanceNumber 180)" in message
    assert "about 161 slice(s) missing" in message


# --- synthetic stacks: sorting, gaps, duplicates, mixed geometry, missing positions -----------


def test_synthetic_regular_stack() -> None:
    volume = _one(assemble_volumes(_axial_series([6.0, 2.0, 4.0, 0.0])))
    assert volume.warnings == ()
    assert _instances(volume) == [4, 2, 3, 1]  # ascending z (feet to head for axial HFS)
    np.testing.assert_array_equal(volume.voxels[:, 0, 0], [4, 2, 3, 1])
    assert volume.voxels.shape == (4, 4, 5)
    assert volume.spacing == (2.0, 0.5, 0.8)
    expected = np.array(
        [[0.8, 0, 0, -10.0], [0, 0.5, 0, 20.0], [0, 0, 2.0, 0.0], [0, 0, 0, 1]], dtype=np.float64
    )
    np.testing.assert_allclose(volume.affine, expected, atol=1e-12)
    np.testing.assert_array_equal(volume.direction, np.eye(3))


def test_sorting_follows_the_normal_not_z() -> None:
    # Sagittal: row cosine +y, column cosine -z, so the normal is -x.
    images = [_image((x, 0.0, 50.0), n, orientation=SAGITTAL) for n, x in enumerate([0, 3, 6], 1)]
    volume = _one(assemble_volumes(images))
    np.testing.assert_allclose(volume.direction[:, 2], [-1, 0, 0])
    assert _instances(volume) == [3, 2, 1]
    assert volume.origin == (6.0, 0.0, 50.0)
    _assert_affine_reproduces_positions(volume)


def test_gap_is_reported_and_median_spacing_kept() -> None:
    volume = _one(assemble_volumes(_axial_series([0, 2, 4, 10, 12, 14])))
    assert volume.shape[0] == 6
    assert volume.spacing[0] == 2.0
    message = _warning(volume, "1 gap(s) in the slice positions where the median step is 2.000")
    assert "6.000 mm between slice 2 (InstanceNumber 3) and slice 3 (InstanceNumber 4)" in message
    assert "about 2 slice(s) missing" in message
    assert not any("not uniform" in w for w in volume.warnings)


def test_step_just_below_the_gap_factor_is_non_uniform_not_a_gap() -> None:
    step = 2.0 * GAP_FACTOR - 0.1
    volume = _one(assemble_volumes(_axial_series([0, 2, 4, 4 + step, 6 + step])))
    assert not any("gap" in w for w in volume.warnings)
    _warning(volume, "slice spacing is not uniform: steps range from 2.000 to 2.900 mm")


def test_duplicate_position_keeps_the_first_instance() -> None:
    images = _axial_series([0, 2, 4, 6])
    images.append(_image((-10.0, 20.0, 4.0), 9))  # a second slice at z=4
    for order in (images, images[::-1]):
        volume = _one(assemble_volumes(order))
        assert _instances(volume) == [1, 2, 3, 4]
        message = _warning(volume, "1 duplicate slice(s)")
        assert "kept InstanceNumber 3, dropped InstanceNumber 9" in message
        assert volume.spacing[0] == 2.0


def test_every_position_repeated_gives_one_volume_per_repetition() -> None:
    first = _axial_series([0, 2, 4])
    second = [_image((-10.0, 20.0, z), n) for n, z in ((4, 0.0), (5, 2.0), (6, 4.0))]
    volumes = assemble_volumes(second + first)
    assert [v.repetition for v in volumes] == [0, 1]
    assert [_instances(v) for v in volumes] == [[1, 2, 3], [4, 5, 6]]
    for volume in volumes:
        _warning(volume, "repeats each of its 3 slice position(s) 2 times")


def test_same_instance_twice_is_used_once() -> None:
    images = _axial_series([0, 2, 4])
    volume = _one(assemble_volumes([*images, images[1]]))
    assert _instances(volume) == [1, 2, 3]
    _warning(volume, "the same instance was given more than once and used once")
    assert not any("duplicate" in w for w in volume.warnings)


def test_mixed_orientation_is_split_with_a_warning() -> None:
    axial = _axial_series([0, 2, 4])
    coronal = [_image((0.0, y, 0.0), n, orientation=CORONAL) for n, y in ((4, 0.0), (5, 3.0))]
    volumes = assemble_volumes(coronal + axial)
    assert [v.shape for v in volumes] == [(3, 4, 5), (2, 4, 5)]
    assert [_instances(v) for v in volumes] == [[1, 2, 3], [4, 5]]
    for volume in volumes:
        _warning(volume, "the series mixes 2 geometries")
    np.testing.assert_allclose(volumes[1].direction[:, 2], [0, 1, 0])
    assert volumes[1].spacing[0] == 3.0


def test_mixed_sizes_are_split_with_a_warning() -> None:
    images = [*_axial_series([0, 2, 4]), _image((-10.0, 20.0, 6.0), 4, rows=6, cols=5)]
    small, large = assemble_volumes(images)
    assert small.shape == (3, 4, 5)
    assert large.shape == (1, 6, 5)
    assert "this one has 1 slice(s) of 6x5" in _warning(large, "mixes 2 geometries")
    assert "this one has 3 slice(s) of 4x5" in _warning(small, "mixes 2 geometries")


def test_mixed_pixel_spacing_is_split() -> None:
    images = [*_axial_series([0, 2]), _image((-10.0, 20.0, 4.0), 3, pixel_spacing=(0.6, 0.6))]
    volumes = assemble_volumes(images)
    assert [v.spacing[1:] for v in volumes] == [(0.5, 0.8), (0.6, 0.6)]


def test_missing_positions_fall_back_to_instance_order() -> None:
    images = [_image(None, n) for n in (3, 1, 2)]
    volume = _one(assemble_volumes(images))
    assert not volume.has_positions
    assert _instances(volume) == [1, 2, 3]
    assert volume.spacing == (2.0, 0.5, 0.8)  # SliceThickness
    assert volume.origin == (0.0, 0.0, 0.0)
    message = _warning(volume, "3 of 3 slice(s) have no ImagePositionPatient")
    assert "ordered by InstanceNumber" in message
    _warning(volume, "the slice spacing is taken from SliceThickness (2 mm)")
    np.testing.assert_array_equal(volume.direction, np.eye(3))


def test_some_missing_positions_also_fall_back() -> None:
    images = _axial_series([4, 2, 0])
    images[1] = _image(None, 2)
    volume = _one(assemble_volumes(images))
    assert not volume.has_positions
    assert _instances(volume) == [1, 2, 3]
    _warning(volume, "1 of 3 slice(s) have no ImagePositionPatient")


def test_missing_orientation_and_thickness_fall_back() -> None:
    images = [_image((0, 0, float(n)), n, orientation=None, thickness=None) for n in (2, 1)]
    volume = _one(assemble_volumes(images))
    assert not volume.has_positions
    assert volume.spacing[0] == 1.0
    _warning(volume, "no ImageOrientationPatient (direction taken as identity)")
    _warning(volume, "no SliceThickness: the slice spacing was set to 1 mm")


def test_tilted_stack_is_reported_and_the_affine_follows_the_positions() -> None:
    tilt = np.radians(15.0)
    images = [
        _image((0.0, 3.0 * k * np.tan(tilt), 3.0 * k), k + 1) for k in range(5)
    ]  # gantry tilt: each slice shifts along y
    volume = _one(assemble_volumes(images))
    assert "tilted by 15.00 degrees" in _warning(volume, "not stacked along the slice normal")
    assert volume.spacing[0] == pytest.approx(3.0)  # distance between slice planes
    np.testing.assert_allclose(volume.direction[:, 2], [0, 0, 1])
    _assert_affine_reproduces_positions(volume)


def test_small_drift_is_not_a_tilt() -> None:
    drift = SHEAR_TOLERANCE / 2
    images = [_image((0.0, 2.0 * k * drift, 2.0 * k), k + 1) for k in range(5)]
    volume = _one(assemble_volumes(images))
    assert volume.warnings == ()
    _assert_affine_reproduces_positions(volume)


def test_positions_off_a_line_are_reported() -> None:
    offsets = [0.0, 0.0, 1.5, 0.0, 0.0]
    images = [_image((dx, 0.0, 2.0 * k), k + 1) for k, dx in enumerate(offsets)]
    volume = _one(assemble_volumes(images))
    _warning(volume, "the slice positions do not lie on one line")


def test_single_slice_uses_slice_thickness() -> None:
    volume = _one(assemble_volumes(_axial_series([7.0], thickness=1.25)))
    assert volume.shape == (1, 4, 5)
    assert volume.spacing == (1.25, 0.5, 0.8)
    assert volume.origin == (-10.0, 20.0, 7.0)
    _warning(volume, "the volume has one slice")


def test_colour_slices_keep_their_samples_axis() -> None:
    volume = _one(assemble_volumes(_axial_series([0, 1, 2], samples=3)))
    assert volume.voxels.shape == (3, 4, 5, 3)


def test_multi_frame_without_positions_keeps_frame_order() -> None:
    pixels = np.arange(4)[:, None, None, None] * np.ones((4, 2, 3, 1), dtype=np.uint8)
    image = DecodedImage(
        pixels=pixels,
        attributes=ImageAttributes(series_instance_uid="1.2.3", number_of_frames=4),
    )
    volume = _one(assemble_volumes([image]))
    np.testing.assert_array_equal(volume.voxels[:, 0, 0], [0, 1, 2, 3])
    assert [s.frame_index for s in volume.slices] == [0, 1, 2, 3]
    assert not volume.has_positions
    _warning(volume, "the images have no PixelSpacing")


def test_series_are_separated_and_ordered_by_uid() -> None:
    images = [*_axial_series([0, 2], series="1.2.9"), *_axial_series([0, 3], series="1.2.10")]
    volumes = assemble_volumes(images)
    assert [v.series_instance_uid for v in volumes] == ["1.2.10", "1.2.9"]
    assert [v.spacing[0] for v in volumes] == [3.0, 2.0]
    assert all(v.warnings == () for v in volumes)


def test_missing_series_uid_is_reported() -> None:
    volume = _one(assemble_volumes(_axial_series([0, 2], series="")))
    _warning(volume, "no SeriesInstanceUID")


def test_differing_rescale_is_reported() -> None:
    images = [_image((0.0, 0.0, 2.0 * k), k + 1, slope=1.0 + k) for k in range(3)]
    volume = _one(assemble_volumes(images))
    assert [s.rescale_slope for s in volume.slices] == [1.0, 2.0, 3.0]
    _warning(volume, "RescaleSlope/RescaleIntercept differ between slices")


# --- errors -------------------------------------------------------------------------------


def test_empty_input_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no images"):
        assemble_volumes([])


def test_frame_position_count_must_match_the_frames() -> None:
    image = DecodedImage(
        pixels=np.zeros((3, 2, 2, 1), dtype=np.uint8),
        attributes=ImageAttributes(
            frame_positions=((0, 0, 0), (0, 0, 1)), image_orientation_patient=AXIAL
        ),
    )
    with pytest.raises(InvalidInput, match="3 frame\\(s\\) but 2 frame position\\(s\\)"):
        assemble_volumes([image])


@pytest.mark.parametrize(
    "orientation",
    [(1.0, 0.0, 0.0, 1.0, 0.0, 0.0), (2.0, 0.0, 0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0)],
)
def test_corrupt_orientation_is_refused(orientation: tuple[float, ...]) -> None:
    with pytest.raises(InvalidInput, match="invalid ImageOrientationPatient"):
        assemble_volumes([_image((0.0, 0.0, 0.0), 1, orientation=orientation)])


def test_non_finite_position_is_refused() -> None:
    with pytest.raises(InvalidInput, match="invalid ImagePositionPatient"):
        assemble_volumes([_image((0.0, float("nan"), 0.0), 1)])
