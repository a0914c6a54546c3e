"""Model-card facts carried as `card.*` parameters of a model's Triton config.

Keeping them in the config means they travel with the model to every Triton replica and the
gateway can show them without access to the model repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.errors import Misconfiguration
from services.common.pipelines import IntendedUse, Range

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


INTENDED_PREFIX = "card.intended_use."


def intended_use_facts(use: IntendedUse) -> dict[str, str]:
    """A pipeline's intended use as the facts its model's card and Triton config state
    (``card.intended_use.<key>`` parameters): one string per constraint, empty ones left out.
    What a pipeline does outside them (refuse, flag) is the pipeline's, not the model's."""

    def bounds(r: Range | None, unit: str) -> str:
        return "" if r is None else r.describe(unit)

    facts = {
        "population": use.population,
        "age": bounds(use.age_years, "years"),
        "presentation_intent_type": ", ".join(use.presentation_intent_type),
        "view_position": ", ".join(use.view_position),
        "photometric_interpretation": ", ".join(use.photometric_interpretation),
        "pixel_spacing": bounds(use.pixel_spacing_mm, "mm"),
        "min_matrix": f"{use.min_matrix} pixels" if use.min_matrix else "",
    }
    return {key: value for key, value in facts.items() if value}


def intended_use_facts_from_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    return {
        key.removeprefix(INTENDED_PREFIX): value
        for key, value in parameters.items()
        if key.startswith(INTENDED_PREFIX)
    }


def intended_use_markdown(use: IntendedUse) -> str:
    """The card's "Intended use, as checked" section body (the same facts)."""
    lines = [
        f"- **{key.replace('_', ' ')}**: {value}" for key, value in intended_use_facts(use).items()
    ]
    return "\n".join(lines)
