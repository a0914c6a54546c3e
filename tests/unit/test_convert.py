"""Conversions' particular cases; tests/unit/test_convert_wire.py round-trips every field."""

import numpy as np

from services.common.convert import image_from_proto, image_to_proto
from services.common.images import DecodedImage, Lut


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
    from services.common.convert import (
        postprocess_response_from_proto,
        postprocess_response_to_proto,
    )
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
    back = postprocess_response_from_proto(postprocess_response_to_proto(assessment))
    assert back.findings == assessment.findings and back.measurements == assessment.measurements
    assert back.triage_priority is TriagePriority.STAT
    np.testing.assert_array_equal(back.segmentations[0].mask, assessment.segmentations[0].mask)
    assert back.segmentations[0].grid.shape == (2, 3, 4)
