"""Model outputs -> findings and a triage priority, as the pipeline's rules say.

Model outputs that do not have what the rules read are the platform's fault (the pipeline
and the served model disagree), not the caller's: ContractViolation, INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.common import pipelines as spec
from services.common.errors import ContractViolation
from services.common.grids import Segmentation
from services.common.images import Geometry
from services.common.jobs import PostprocessJob
from services.common.results import (
    Assessment,
    Caveat,
    CaveatReason,
    Finding,
    FindingStatus,
    Measurement,
)
from services.postprocessor import heatmaps
from services.postprocessor.measurements import measure


def sigmoid(values: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) computed as exp(-log(1 + e^-x)): no overflow for large |x|. The training
    scripts call this one too, so a card's thresholds are on the served probabilities."""
    return np.asarray(np.exp(-np.logaddexp(0.0, -values)))


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return sigmoid(values)
    return values


def _heatmaps(
    rule: spec.FindingRule,
    outputs: Mapping[str, np.ndarray],
    rows: int,
    geometries: Sequence[Geometry],
    opacity: float,
) -> list[bytes]:
    if rule.heatmap_output is None:
        return [b""] * rows
    cams = outputs.get(rule.heatmap_output)
    if cams is None or len(cams) != rows:
        raise ContractViolation(f"model output {rule.heatmap_output!r} must have one map per image")
    if len(geometries) != rows:
        raise ContractViolation("heatmaps need each image's geometry")
    # A map per class: take this rule's channel when the CAM has several.
    return [
        heatmaps.render(
            cam[rule.index] if cam.ndim == 3 and cam.shape[0] > rule.index else cam,
            geometry,
            opacity,
        )
        for cam, geometry in zip(cams, geometries, strict=True)
    ]


def _ood(
    outputs: Mapping[str, np.ndarray], rows: int, rule: spec.OodRule | None
) -> tuple[list[float], float]:
    """Each row's out-of-distribution score and the threshold (zeros without a rule)."""
    if rule is None:
        return [0.0] * rows, 0.0
    values = outputs.get(rule.output)
    if values is None:
        raise ContractViolation(f"model output {rule.output!r} is missing")
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.shape[0] != rows:
        raise ContractViolation(f"model output {rule.output!r} must have one score per image")
    return [float(v) for v in scores], rule.threshold


def assess(job: PostprocessJob, pipeline: spec.Pipeline) -> Assessment:
    """Apply each finding rule to each image row; the study's priority is the most urgent
    positive's.

    ``pipeline`` is the one ``job.pipeline`` names. An image with caveats (the gateway's
    intended-use flags, or an out-of-distribution score above the model's threshold) gets
    INDETERMINATE findings, which never raise the priority. ``job.geometries`` (where each row
    came from in its image) is needed only for heatmaps, ``job.grid`` (the series' voxel grid)
    only for the measurements of volume pipelines.
    """
    outputs, sop_instance_uids, grid = job.outputs, job.sop_instance_uids, job.grid
    rows = len(sop_instance_uids)
    findings: list[Finding] = []
    priority = pipeline.postprocess.default_priority
    ood_scores, ood_threshold = _ood(outputs, rows, pipeline.postprocess.ood)
    by_image: dict[str, list[Caveat]] = {uid: [] for uid in sop_instance_uids}
    for caveat in job.caveats:
        by_image.setdefault(caveat.sop_instance_uid, []).append(caveat)
    ood = pipeline.postprocess.ood
    for uid, score in zip(sop_instance_uids, ood_scores, strict=True):
        if ood is not None and score > ood.threshold:
            by_image[uid].append(
                Caveat(
                    CaveatReason.OUT_OF_DISTRIBUTION,
                    f"the model's out-of-distribution score {score:.3g} is above its threshold "
                    f"{ood.threshold:.3g} ({ood.acceptance:.0%} of validation images are below)",
                    uid,
                )
            )
    for rule in pipeline.postprocess.findings:
        if rule.output not in outputs:
            raise ContractViolation(f"model output {rule.output!r} is missing")
        values = np.asarray(outputs[rule.output], dtype=np.float64)
        if values.ndim == 0 or values.shape[0] != rows:
            raise ContractViolation(
                f"model output {rule.output!r} has shape {values.shape}; expected {rows} rows"
            )
        values = values.reshape(rows, -1)
        if rule.index >= values.shape[1]:
            raise ContractViolation(
                f"model output {rule.output!r} has {values.shape[1]} columns; rule "
                f"{rule.concept.code} reads column {rule.index}"
            )
        probabilities = _activate(values[:, rule.index], rule.activation)
        maps = (
            _heatmaps(rule, outputs, rows, job.geometries, pipeline.postprocess.heatmap_opacity)
            if job.heatmaps
            else [b""] * rows
        )
        for uid, probability, png, score in zip(
            sop_instance_uids, probabilities, maps, ood_scores, strict=True
        ):
            doubts = tuple(by_image[uid])
            positive = not doubts and bool(probability >= rule.threshold)
            findings.append(
                Finding(
                    rule.concept,
                    float(probability),
                    rule.threshold,
                    positive,
                    uid,
                    png,
                    status=FindingStatus.INDETERMINATE if doubts else None,
                    caveats=doubts,
                    ood_score=float(score),
                    ood_threshold=ood_threshold,
                )
            )
            if positive:
                priority = priority.at_least(rule.priority_if_positive)
    measurements: list[Measurement] = []
    segmentations: list[Segmentation] = []
    if pipeline.postprocess.measurements:
        if grid is None:
            raise ContractViolation(f"pipeline {pipeline.name} measures volumes but got no grid")
        measurements, segmentations = measure(outputs, grid, pipeline)
    return Assessment(
        findings,
        priority,
        measurements,
        segmentations if job.masks else [],
        [c for doubts in by_image.values() for c in doubts],
    )
