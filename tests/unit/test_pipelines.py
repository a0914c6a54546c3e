import json
import re
from pathlib import Path

import pytest
import yaml

from services.common.errors import NoMatchingPipeline, NotFound, quote_prefix
from services.common.images import ImageAttributes
from services.common.pipelines import (
    PIPELINE_NAME,
    Pipeline,
    PipelineRegistry,
    is_pipeline_name,
)

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


def test_a_huge_pipeline_name_is_not_found_and_quoted_short(registry: PipelineRegistry) -> None:
    with pytest.raises(NotFound) as caught:
        registry.get("a" * 2**20)
    reason = caught.value.reason
    assert len(reason) < 200, len(reason)
    assert reason.startswith("unknown pipeline 'aaaa") and f"({2**20} characters)" in reason


def test_a_pipeline_name_with_a_newline_is_not_found_and_cannot_forge_a_log_line(
    registry: PipelineRegistry,
) -> None:
    assert not is_pipeline_name("cxr_pneumonia\n")  # fullmatch: "$" would allow a final newline
    with pytest.raises(NotFound):
        registry.get("cxr_pneumonia\n")
    forged = "cxr_pneumonia\n2024-01-01 12:00:00 INFO imaging.rpc Analyze OK " + "x" * 300
    with pytest.raises(NotFound) as caught:
        registry.get(forged)
    assert "\n" not in caught.value.reason and len(caught.value.reason) < 200


def test_shipped_pipeline_names_match_the_pattern_callers_are_held_to(
    registry: PipelineRegistry,
) -> None:
    names = [yaml.safe_load(p.read_text())["name"] for p in sorted(PIPELINES.glob("*.yaml"))]
    assert names and all(re.fullmatch(PIPELINE_NAME, n) for n in names), names
    for name in names:
        assert registry.get(name).name == name
    for bad in ("x" * 65, "CXR_pneumonia", "cxr.pneumonia", "-cxr", "cxr pneumonia", "cxr\n"):
        spec = _spec()
        spec["name"] = bad
        with pytest.raises(ValueError, match="name"):
            Pipeline.model_validate(spec)
    spec = _spec()
    spec["name"] = "x" * 64
    assert Pipeline.model_validate(spec).name == "x" * 64


def test_quote_prefix_bounds_what_it_quotes() -> None:
    assert quote_prefix("mammo_v9") == "'mammo_v9'"
    assert quote_prefix("a" * 100, 8) == "'aaaaaaaa'... (100 characters)"
    assert quote_prefix("a\nb") == "'a\\nb'"
    for nasty in ("\x00" * 1000, "\U0001f600" * 1000, "\udcff" * 1000):
        assert len(quote_prefix(nasty)) < 100 and "(1000 characters)" in quote_prefix(nasty)
