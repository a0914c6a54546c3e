"""A model's card per version: Triton's parameters are per model, so version N's metrics are
card.vN.metric.*, and card.metric.* serve versions without their own."""

from __future__ import annotations

import pytest

from services.common.cards import card_from_parameters
from services.common.errors import Misconfiguration

PARAMETERS = {
    "card.intended_use": "research",
    "card.metric.test_auc": "0.966",
    "card.v2.metric.test_auc": "0.981",
    "card.v2.metric.ood_threshold": "41.5",
}


def test_a_version_with_its_own_metrics_gets_them_only() -> None:
    card = card_from_parameters("cxr", "2", PARAMETERS)
    assert card.metrics == {"test_auc": 0.981, "ood_threshold": 41.5}
    assert card.intended_use == "research"


@pytest.mark.parametrize("version", ["1", ""])
def test_other_versions_get_the_shared_metrics(version: str) -> None:
    assert card_from_parameters("cxr", version, PARAMETERS).metrics == {"test_auc": 0.966}


def test_a_metric_that_is_not_a_number_is_a_misconfiguration() -> None:
    with pytest.raises(Misconfiguration, match=r"card\.v2\.metric\.x"):
        card_from_parameters("cxr", "2", {"card.v2.metric.x": "high"})
