"""Model outputs -> findings and a triage priority, as the pipeline's rules say."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.common import pipelines as spec
from services.common.errors import InvalidInput

PRIORITY_ORDER = ("ROUTINE", "URGENT", "STAT")


@dataclass(frozen=True)
class Finding:
    code: str
    coding_scheme: str
    display_name: str
    probability: float
    threshold: float
    positive: bool
    sop_instance_uid: str


@dataclass(frozen=True)
class Assessment:
    findings: list[Finding]
    triage_priority: str


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        # 1 / (1 + e^-x) computed as exp(-log(1 + e^-x)): no overflow for large |x|.
        return np.asarray(np.exp(-np.logaddexp(0.0, -values)))
    return values


def assess(
    outputs: Mapping[str, np.ndarray], sop_instance_uids: Sequence[str], pipeline: spec.Pipeline
) -> Assessment:
    """Apply each finding rule to each image row; the study's priority is the most urgent."""
    rows = len(sop_instance_uids)
    findings: list[Finding] = []
    priority = pipeline.postprocess.default_priority
    for rule in pipeline.postprocess.findings:
        if rule.output not in outputs:
            raise InvalidInput(f"model output {rule.output!r} is missing")
        values = np.asarray(outputs[rule.output], dtype=np.float64)
        if values.ndim == 0 or values.shape[0] != rows:
            raise InvalidInput(
                f"model output {rule.output!r} has shape {values.shape}; expected {rows} rows"
            )
        values = values.reshape(rows, -1)
        if rule.index >= values.shape[1]:
            raise InvalidInput(
                f"model output {rule.output!r} has {values.shape[1]} columns; rule "
                f"{rule.code} reads column {rule.index}"
            )
        probabilities = _activate(values[:, rule.index], rule.activation)
        for uid, probability in zip(sop_instance_uids, probabilities, strict=True):
            positive = bool(probability >= rule.threshold)
            findings.append(
                Finding(
                    rule.code,
                    rule.coding_scheme,
                    rule.display_name,
                    float(probability),
                    rule.threshold,
                    positive,
                    uid,
                )
            )
            if positive and PRIORITY_ORDER.index(rule.priority_if_positive) > PRIORITY_ORDER.index(
                priority
            ):
                priority = rule.priority_if_positive
    return Assessment(findings, priority)
