"""Model-card facts carried as `card.*` parameters of a model's Triton config.

Keeping them in the config means they travel with the model to every Triton replica and the
gateway can show them without access to the model repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.errors import Misconfiguration

PREFIX = "card."
METRIC_PREFIX = "card.metric."


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    intended_use: str = ""
    not_for_use: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    card_reference: str = ""


def _metrics(name: str, parameters: Mapping[str, str], prefix: str) -> dict[str, float]:
    metrics = {}
    for key, value in parameters.items():
        if key.startswith(prefix):
            try:
                metrics[key.removeprefix(prefix)] = float(value)
            except ValueError:
                raise Misconfiguration(
                    f"model {name} config parameter {key} is not a number: {value!r}"
                ) from None
    return metrics


def card_from_parameters(name: str, version: str, parameters: Mapping[str, str]) -> ModelCard:
    """Triton's parameters belong to the model, not a version: a version's own metrics are
    ``card.v<N>.metric.*``; ``card.metric.*`` are those of a version without its own."""
    own = _metrics(name, parameters, f"{PREFIX}v{version}.metric.") if version else {}
    metrics = own or _metrics(name, parameters, METRIC_PREFIX)
    return ModelCard(
        name=name,
        version=version,
        intended_use=parameters.get(f"{PREFIX}intended_use", ""),
        not_for_use=parameters.get(f"{PREFIX}not_for_use", ""),
        metrics=metrics,
        card_reference=parameters.get(f"{PREFIX}reference", ""),
    )
