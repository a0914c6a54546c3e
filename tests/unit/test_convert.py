import numpy as np

from services.common.convert import image_from_proto, image_to_proto
from services.common.images import DecodedImage, ImageAttributes, Lut


def test_every_attribute_survives_the_wire() -> None:
    attrs = ImageAttributes(
        sop_instance_uid="1.2.3",
        modality="MR",
        photometric_interpretation="MONOCHROME1",
        bits_stored=12,
        pixel_representation=1,
        rescale_slope=2.5,
        rescale_intercept=-1024.0,
        window_center=40.0,
        window_width=400.0,
        pixel_spacing=(0.5, 0.75),
        number_of_frames=2,
        frame_positions=((0.0, 0.0, 0.0), (0.0, 0.0, 1.5)),
        image_orientation_patient=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        slice_thickness=1.5,
        modality_lut=Lut(-10, 16, np.arange(5, dtype=np.uint16), "HU"),
        voi_luts=(Lut(0, 8, np.array([0, 128, 255], np.uint16), "soft"),),
        voi_lut_function="SIGMOID",
        instance_number=7,
        series_number=3,
    )
    image = DecodedImage(np.arange(8, dtype=np.int16).reshape(2, 2, 2, 1), attrs)
    back = image_from_proto(image_to_proto(image))
    np.testing.assert_array_equal(back.pixels, image.pixels)
    assert back.attributes.modality_lut is not None
    np.testing.assert_array_equal(back.attributes.modality_lut.data, attrs.modality_lut.data)
    assert back.attributes.modality_lut.first_mapped == -10
    assert back.attributes.voi_luts[0].explanation == "soft"
    plain = {
        k: v for k, v in vars(back.attributes).items() if k not in {"modality_lut", "voi_luts"}
    }
    expected = {k: v for k, v in vars(attrs).items() if k not in {"modality_lut", "voi_luts"}}
    assert plain == expected


def test_absent_optionals_stay_absent() -> None:
    back = image_from_proto(image_to_proto(DecodedImage(np.zeros((1, 2, 2, 1), np.uint8))))
    assert back.attributes.window_center is None and back.attributes.slice_thickness is None
    assert back.attributes.modality_lut is None and back.attributes.frame_positions == ()
    assert back.attributes.image_orientation_patient is None


def test_lut_maps_and_clamps() -> None:
    lut = Lut(first_mapped=10, bits_per_entry=16, data=np.array([100, 200, 300], np.uint16))
    np.testing.assert_array_equal(
        lut.apply(np.array([5, 10, 11, 12, 99])), [100, 100, 200, 300, 300]
    )


def test_an_assessment_survives_the_wire() -> None:
    from services.common.convert import assessment_from_proto, assessment_to_proto
    from services.common.grids import Segmentation, VolumeGrid
    from services.common.results import (
        Assessment,
        CodedConcept,
        Finding,
        Measurement,
        TriagePriority,
    )

    grid = VolumeGrid("1.2.9", (2, 3, 4), (2.0, 0.5, 0.5), np.eye(4))
    assessment = Assessment(
        [
            Finding(CodedConcept(code="233604007", display_name="Pneumonia"), 0.9, 0.68, True, "1"),
            Finding(
                CodedConcept(code="x", coding_scheme="99L", display_name="y"),
                0.1,
                0.5,
                False,
                "2",
                b"png",
            ),
        ],
        TriagePriority.STAT,
        [
            Measurement(
                CodedConcept(code="118565006", display_name="Brain volume"), 1.5, "mL", "1.2.9"
            )
        ],
        [Segmentation("brain", grid, np.ones((2, 3, 4), np.uint8))],
    )
    back = assessment_from_proto(assessment_to_proto(assessment))
    assert back.findings == assessment.findings and back.measurements == assessment.measurements
    assert back.triage_priority is TriagePriority.STAT
    np.testing.assert_array_equal(back.segmentations[0].mask, assessment.segmentations[0].mask)
    assert back.segmentations[0].grid.shape == (2, 3, 4)
