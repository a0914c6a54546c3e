"""The intended use the gateway checks (pipelines/*.yaml) is what each model states: the
Triton config's card.intended_use.* parameters (served to integrators by ListPipelines) and,
for generated cards, the MODEL_CARD.md section the training script writes from the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.common.cards import (
    intended_use_facts,
    intended_use_facts_from_parameters,
    intended_use_markdown,
)
from services.common.pipelines import PipelineRegistry

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = PipelineRegistry.load(ROOT / "pipelines")


def _parameters(model: str) -> dict[str, str]:
    config = text_format.Parse(
        (ROOT / "model_repository" / model / "config.pbtxt").read_text(),
        model_config_pb2.ModelConfig(),
    )
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.mark.parametrize("pipeline", [p.name for p in REGISTRY.all()])
def test_the_config_states_the_intended_use_the_pipeline_checks(pipeline: str) -> None:
    spec = REGISTRY.get(pipeline)
    assert spec.intended_use is not None
    facts = intended_use_facts(spec.intended_use)
    assert intended_use_facts_from_parameters(_parameters(spec.model.name)) == facts
    assert facts["population"] and facts["age"]


@pytest.mark.parametrize("pipeline", [p.name for p in REGISTRY.all()])
def test_the_generated_card_states_it_too(pipeline: str) -> None:
    spec = REGISTRY.get(pipeline)
    assert spec.intended_use is not None
    card = (ROOT / "model_repository" / spec.model.name / "MODEL_CARD.md").read_text()
    assert intended_use_markdown(spec.intended_use) in card


def test_a_changed_constraint_no_longer_matches() -> None:
    spec = REGISTRY.get("cxr_pneumonia").intended_use
    assert spec is not None
    older = spec.model_copy(update={"view_position": ["PA", "AP", "LL"]})
    assert intended_use_facts(older) != intended_use_facts_from_parameters(
        _parameters("cxr_pneumonia")
    )
