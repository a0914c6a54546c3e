"""An output the caller asked for that the pipeline cannot make is named in the warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.pipelines import PipelineRegistry
from services.common.results import OutputOptions
from services.gateway.core import _outputs_not_made

PIPELINES = PipelineRegistry.load(Path(__file__).resolve().parents[2] / "pipelines")
EVERYTHING = OutputOptions(heatmaps=True, masks=True, dicom_seg=True, dicom_heatmap=True)


@pytest.mark.parametrize(
    ("pipeline", "missing"),
    [
        ("mri_brain_extraction", ["heatmaps", "DICOM heatmap images"]),
        ("cxr_pneumonia", ["masks", "a DICOM Segmentation"]),
        ("us_breast", ["masks", "a DICOM Segmentation"]),
    ],
)
def test_each_output_the_pipeline_cannot_make_is_named(pipeline: str, missing: list[str]) -> None:
    warnings = _outputs_not_made(PIPELINES.get(pipeline), EVERYTHING)
    assert [w.split(" asked for")[0] for w in warnings] == missing
    assert all(f"pipeline {pipeline!r} cannot make any" in w for w in warnings)


def test_nothing_is_said_when_nothing_impossible_is_asked() -> None:
    brain = PIPELINES.get("mri_brain_extraction")
    assert _outputs_not_made(brain, OutputOptions(masks=True, dicom_seg=True, dicom_sr=True)) == []
    assert _outputs_not_made(PIPELINES.get("cxr_pneumonia"), OutputOptions(heatmaps=True)) == []
