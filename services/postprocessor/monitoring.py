"""What each model decides after deployment, per version, for drift alerts.

Prometheus counts decisions by status and out-of-distribution images, and states the rates the
model's card expects (imaging_model_expected_rate), so one alert rule
(helm/imaging-platform/files/prometheus-rules.yaml) compares every model with its own card.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from services.common.pipelines import Pipeline
from services.common.results import Assessment, CaveatReason, FindingStatus

DECISIONS = Counter(
    "imaging_model_decisions_total",
    "Findings by model version and status (POSITIVE, NEGATIVE, INDETERMINATE)",
    ["model", "version", "finding", "status"],
)
IMAGES = Counter("imaging_model_images_total", "Images assessed", ["model", "version"])
OUT_OF_DISTRIBUTION = Counter(
    "imaging_model_out_of_distribution_total",
    "Images whose out-of-distribution score was above the model's threshold",
    ["model", "version"],
)
EXPECTED = Gauge(
    "imaging_model_expected_rate",
    "Rates the model card states: positive (share of decided findings) and ood",
    ["model", "version", "kind"],
)


def _model(pipeline: Pipeline) -> tuple[str, str]:
    return pipeline.model.name, pipeline.model.version or "latest"


def declare(pipelines: Iterable[Pipeline]) -> None:
    """The rates each served model's card states, once at start-up (they are configuration),
    and every counter series at zero: a series born with its first decision already at 1 has
    no increase Prometheus can see, so the drift rules' rates stayed empty until a second
    decision fell between two scrapes."""
    for pipeline in pipelines:
        model, version = _model(pipeline)
        rules = pipeline.postprocess
        IMAGES.labels(model, version)
        OUT_OF_DISTRIBUTION.labels(model, version)
        for rule in rules.findings:
            for status in FindingStatus:
                DECISIONS.labels(model, version, rule.concept.code, status.value)
        if rules.ood is not None:
            EXPECTED.labels(model, version, "ood").set(1.0 - rules.ood.acceptance)
        for rule in rules.findings:
            if rule.expected_positive_rate is not None:
                EXPECTED.labels(model, version, "positive").set(rule.expected_positive_rate)


def record(pipeline: Pipeline, assessment: Assessment) -> None:
    model, version = _model(pipeline)
    images: set[str] = set()
    flagged: set[str] = set()
    for finding in assessment.findings:
        status = finding.status or "NEGATIVE"
        DECISIONS.labels(model, version, finding.concept.code, status).inc()
        images.add(finding.sop_instance_uid)
        if any(c.reason is CaveatReason.OUT_OF_DISTRIBUTION for c in finding.caveats):
            flagged.add(finding.sop_instance_uid)
    if images:
        IMAGES.labels(model, version).inc(len(images))
    if flagged:
        OUT_OF_DISTRIBUTION.labels(model, version).inc(len(flagged))
