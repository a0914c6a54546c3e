"""Every served model carries its card facts in its Triton config, consistent with its files."""

import json
from pathlib import Path

import pytest

from services.common.cards import card_from_parameters
from services.triton_local.repository import read_config

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
ROOT = REPOSITORY.parent
MODELS = sorted(p.parent.name for p in REPOSITORY.glob("*/config.pbtxt"))


def _card(model: str):  # type: ignore[no-untyped-def]
    config = read_config(REPOSITORY / model / "config.pbtxt")
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    return card_from_parameters(config.name, "1", parameters)


@pytest.mark.parametrize("model", MODELS)
def test_card_parameters_are_present_and_point_at_the_card(model: str) -> None:
    card = _card(model)
    assert len(card.intended_use) > 20 and len(card.not_for_use) > 20
    assert (ROOT / card.card_reference).is_file()
    assert card.metrics, "at least one measured metric"


@pytest.mark.parametrize("model", [m for m in MODELS if (REPOSITORY / m / "metrics.json").exists()])
def test_card_metrics_equal_the_training_scripts_metrics(model: str) -> None:
    metrics = json.loads((REPOSITORY / model / "metrics.json").read_text())
    for name, value in _card(model).metrics.items():
        assert value == pytest.approx(metrics[name], abs=1e-6), name
