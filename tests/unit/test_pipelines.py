import json
from pathlib import Path

import pytest
import yaml

from services.common.errors import NoMatchingPipeline, NotFound
from services.common.images import ImageAttributes
from services.common.pipelines import Pipeline, PipelineRegistry

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


@pytest.fixture
def registry() -> PipelineRegistry:
    return PipelineRegistry.load(PIPELINES)


def test_chest_radiographs_route_to_the_pneumonia_pipeline(registry: PipelineRegistry) -> None:
    chest = ImageAttributes(modality="CR", body_part_examined="chest")
    assert registry.route(
        [chest, ImageAttributes(modality="DX", body_part_examined="CHEST")]
    ).name == ("cxr_pneumonia")


def test_a_study_no_pipeline_accepts_says_why(registry: PipelineRegistry) -> None:
    tibia = ImageAttributes(modality="CR", body_part_examined="EXTREMITY")
    with pytest.raises(NoMatchingPipeline, match="BodyPartExamined is 'EXTREMITY'"):
        registry.route([tibia])
    with pytest.raises(NoMatchingPipeline, match="Modality is 'CT'"):
        registry.route([ImageAttributes(modality="CT", body_part_examined="CHEST")])


def test_opt_in_pipelines_run_only_when_named_and_only_on_studies_they_accept(
    registry: PipelineRegistry,
) -> None:
    chest = [ImageAttributes(modality="CR", body_part_examined="CHEST")]
    ensemble = registry.get("cxr_pneumonia_ensemble")
    assert not ensemble.auto_route
    assert registry.route(chest).name == "cxr_pneumonia"
    assert registry.check(ensemble, chest) is ensemble
    breast = [ImageAttributes(modality="US", body_part_examined="BREAST")]
    with pytest.raises(NoMatchingPipeline, match=r"'cxr_pneumonia_ensemble' does not accept.*'US'"):
        registry.check(ensemble, breast)
    tibia = [ImageAttributes(modality="CR", body_part_examined="EXTREMITY")]
    with pytest.raises(NoMatchingPipeline) as refused:
        registry.route(tibia)
    assert "cxr_pneumonia_ensemble" not in str(refused.value)  # not a routing candidate


def test_unknown_pipeline_names_the_known_ones(registry: PipelineRegistry) -> None:
    with pytest.raises(NotFound, match=r"unknown pipeline 'nope'.*cxr_pneumonia"):
        registry.get("nope")


def _spec() -> dict:
    return yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())


def test_specs_with_unknown_steps_or_outputs_are_rejected() -> None:
    spec = _spec()
    spec["preprocess"].append({"op": "sharpen"})
    with pytest.raises(ValueError, match=r"sharpen|does not match"):
        Pipeline.model_validate(spec)
    spec = _spec()
    spec["postprocess"]["findings"][0]["output"] = "missing"
    with pytest.raises(ValueError, match="unknown output 'missing'"):
        Pipeline.model_validate(spec)
    spec = _spec()
    spec["postprocess"]["findings"][0]["threshold"] = 1.5
    with pytest.raises(ValueError, match="threshold"):
        Pipeline.model_validate(spec)


def test_load_reports_the_bad_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match=r"invalid pipeline spec broken\.yaml"):
        PipelineRegistry.load(tmp_path)
    with pytest.raises(ValueError, match="no pipeline specs"):
        PipelineRegistry.load(tmp_path / "empty")


def test_pipeline_threshold_is_the_model_cards_operating_point(registry: PipelineRegistry) -> None:
    pipeline = registry.get("cxr_pneumonia")
    version = pipeline.model.version
    assert version == "2"
    # Each version has its own card: metrics.json for version 1, metrics_v<N>.json after it.
    name = "metrics.json" if version == "1" else f"metrics_v{version}.json"
    metrics = json.loads(
        (PIPELINES.parent / "model_repository" / "cxr_pneumonia" / name).read_text()
    )
    [rule] = pipeline.postprocess.findings
    assert rule.threshold == pytest.approx(metrics["operating_threshold"], abs=1e-6)
