from pathlib import Path

import numpy as np
import pytest

from services.common.errors import ContractViolation
from services.common.jobs import PostprocessJob
from services.common.pipelines import Pipeline, PipelineRegistry
from services.common.results import Assessment
from services.postprocessor.core import assess

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _assess(pipeline: Pipeline, outputs: dict[str, np.ndarray], *uids: str) -> Assessment:
    """The pipeline's rules on these outputs, one row per image uid."""
    return assess(PostprocessJob(pipeline.name, outputs, uids), pipeline)


def in_distribution(rows: int) -> np.ndarray:
    """The model's out-of-distribution score for rows well inside the training data."""
    return np.zeros((rows, 1), np.float32)


@pytest.fixture
def cxr() -> Pipeline:
    """The served rules without the heatmap (tests/unit/test_heatmaps.py covers those)."""
    spec = PipelineRegistry.load(PIPELINES).get("cxr_pneumonia").model_dump()
    for rule in spec["postprocess"]["findings"]:
        rule["heatmap_output"] = None
    return Pipeline.model_validate(spec)


def test_logits_become_probabilities_findings_and_priority(cxr: Pipeline) -> None:
    logits = np.array([[-2.0], [3.0]], np.float32)
    result = _assess(cxr, {"logits": logits, "ood": in_distribution(2)}, "1.2.3", "1.2.4")
    probs = [f.probability for f in result.findings]
    np.testing.assert_allclose(probs, 1 / (1 + np.exp([2.0, -3.0])), rtol=1e-12)
    assert [f.positive for f in result.findings] == [False, True]
    assert [f.sop_instance_uid for f in result.findings] == ["1.2.3", "1.2.4"]
    assert result.triage_priority == "URGENT"
    assert result.findings[0].concept.code == "233604007"


def test_all_negative_study_is_routine(cxr: Pipeline) -> None:
    result = _assess(cxr, {"logits": np.array([[-5.0]]), "ood": in_distribution(1)}, "1")
    assert result.triage_priority == "ROUTINE"


def test_extreme_logits_do_not_overflow(cxr: Pipeline) -> None:
    outputs = {"logits": np.array([[-1000.0], [1000.0]]), "ood": in_distribution(2)}
    result = _assess(cxr, outputs, "a", "b")
    assert [f.probability for f in result.findings] == [0.0, 1.0]


def test_missing_or_misshapen_outputs_are_reported(cxr: Pipeline) -> None:
    with pytest.raises(ContractViolation, match="missing"):
        _assess(cxr, {}, "1")
    with pytest.raises(ContractViolation, match="model output 'ood' is missing"):
        _assess(cxr, {"logits": np.zeros((1, 1))}, "1")
    with pytest.raises(ContractViolation, match="model output 'logits' is missing"):
        _assess(cxr, {"ood": in_distribution(1)}, "1")
    with pytest.raises(ContractViolation, match="expected 2 rows"):
        _assess(cxr, {"logits": np.zeros((3, 1)), "ood": in_distribution(2)}, "1", "2")
