"""The Kubernetes HorizontalPodAutoscaler's arithmetic, without a cluster (imported by module name).

Transcribed from kube-controller-manager (pkg/controller/podautoscaler): replica_calculator.go
(calcPlainMetricReplicas, GetExternalMetricReplicas, GetExternalPerPodMetricReplicas) and
horizontal.go (reconcileAutoscaler, stabilizeRecommendationWithBehaviors,
convertDesiredReplicasWithBehaviorRate, calculateScale{Up,Down}Limit...). Metric values are
plain floats here; the controller works in milli-units, which changes nothing at these scales.

- A Pods metric with an AverageValue target (the chart's Triton HPA): with every pod ready
  and reporting, desired = ceil(currentReplicas x mean / target) = ceil(sum / target), unless
  |mean / target - 1| <= tolerance (0.1), which keeps the current count.
- An External metric (what KEDA turns a trigger into): metricType Value scales the ready pods
  by value / target; AverageValue divides the total by the target per pod.
- behavior: each sync the raw recommendation is stabilized (the lowest of the scale-up window,
  the highest of the scale-down window, around the current count), then limited by the
  policies: per policy the replicas at the start of its period (current minus what was added,
  plus what was removed within periodSeconds) plus (Pods) or times (Percent) its value;
  selectPolicy Max takes the most permissive policy, Min the least, Disabled forbids; and
  always within minReplicas..maxReplicas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOLERANCE = 0.1
# --horizontal-pod-autoscaler-sync-period default: how often the controller evaluates an HPA.
SYNC_PERIOD_SECONDS = 15


def within_tolerance(usage_ratio: float, tolerance: float = TOLERANCE) -> bool:
    return abs(1.0 - usage_ratio) <= tolerance


def pods_metric_replicas(
    values: Sequence[float],
    target: float,
    current: int,
    *,
    missing: int = 0,
    tolerance: float = TOLERANCE,
) -> int:
    """Desired replicas for a Pods metric with an AverageValue target (calcPlainMetricReplicas).

    ``values``: the metric of each ready pod that reports it; ``missing``: ready pods without a
    value (e.g. not scraped yet). Unready pods are left out by the caller, as the controller
    leaves them out of a scale-down and counts them as 0 in a scale-up."""
    if not values:
        raise ValueError("no metrics for any ready pod: the HPA does not scale")
    ready = len(values) + missing
    usage_ratio = sum(values) / len(values) / target
    if missing == 0:
        if within_tolerance(usage_ratio, tolerance):
            return current
        return math.ceil(usage_ratio * ready)
    # Missing pods count as exactly the target on a scale-down and as 0 on a scale-up.
    filled = [*values, *([target] * missing if usage_ratio < 1.0 else [0.0] * missing)]
    new_ratio = sum(filled) / len(filled) / target
    if (
        within_tolerance(new_ratio, tolerance)
        or (usage_ratio > 1.0 and new_ratio < 1.0)
        or (usage_ratio < 1.0 and new_ratio > 1.0)
    ):
        return current
    desired = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and desired > current) or (new_ratio > 1.0 and desired < current):
        return current
    return desired


def external_value_replicas(
    value: float, target: float, ready: int, current: int, tolerance: float = TOLERANCE
) -> int:
    """External metric, target type Value (KEDA metricType Value): ready pods x value / target."""
    usage_ratio = value / target
    if within_tolerance(usage_ratio, tolerance):
        return current
    return math.ceil(usage_ratio * ready)


def external_average_replicas(
    total: float, target_per_pod: float, current: int, tolerance: float = TOLERANCE
) -> int:
    """External metric, target type AverageValue (KEDA metricType AverageValue): total / target."""
    usage_ratio = total / (target_per_pod * current)
    if within_tolerance(usage_ratio, tolerance):
        return current
    return math.ceil(total / target_per_pod)


@dataclass(frozen=True)
class Policy:
    type: str  # Pods or Percent
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_seconds: int
    policies: tuple[Policy, ...]
    select_policy: str = "Max"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], direction: str) -> ScalingRules:
        """HPAScalingRules as the API server defaults them (scaleUp: window 0, 4 pods or 100%
        per 15 s; scaleDown: window 300 s, 100% per 15 s)."""
        policies: tuple[Policy, ...]
        if direction == "up":
            window, policies = 0, (Policy("Pods", 4, 15), Policy("Percent", 100, 15))
        else:
            window, policies = 300, (Policy("Percent", 100, 15),)
        if spec.get("policies"):
            policies = tuple(
                Policy(p["type"], int(p["value"]), int(p["periodSeconds"]))
                for p in spec["policies"]
            )
        return cls(
            int(spec.get("stabilizationWindowSeconds", window)),
            policies,
            str(spec.get("selectPolicy", "Max")),
        )


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules
    scale_down: ScalingRules

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Behavior:
        spec = spec or {}
        return cls(
            ScalingRules.from_spec(spec.get("scaleUp") or {}, "up"),
            ScalingRules.from_spec(spec.get("scaleDown") or {}, "down"),
        )


def _changed_within(events: Sequence[tuple[float, int]], now: float, period: int) -> int:
    return sum(change for at, change in events if at > now - period)


@dataclass
class Autoscaler:
    """One HPA's state across syncs: recommendations and scale events, as the controller keeps."""

    min_replicas: int
    max_replicas: int
    behavior: Behavior
    replicas: int
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)

    def sync(self, now: float, metric_desired: int) -> int:
        """One reconcile at ``now`` (seconds) given the metric's raw desired count; returns the
        replica count the HPA sets (and keeps it as the current one)."""
        current = self.replicas
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        else:
            stabilized = self._stabilize(now, current, metric_desired)
            desired = self._limit_rate(now, current, stabilized)
        if desired > current:
            self.scale_up_events.append((now, desired - current))
        elif desired < current:
            self.scale_down_events.append((now, current - desired))
        self.replicas = desired
        return desired

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        up_cutoff = now - self.behavior.scale_up.stabilization_window_seconds
        down_cutoff = now - self.behavior.scale_down.stabilization_window_seconds
        up, down = desired, desired
        for at, recommendation in self.recommendations:
            if at > up_cutoff:
                up = min(up, recommendation)
            if at > down_cutoff:
                down = max(down, recommendation)
        self.recommendations.append((now, desired))
        return min(max(current, up), down)

    def _limit_rate(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            limit = max(self._scale_up_limit(now, current), current)
            return min(desired, self.max_replicas, limit)
        if desired < current:
            limit = min(self._scale_down_limit(now, current), current)
            return max(desired, self.min_replicas, limit)
        return desired

    def _period_start(self, now: float, current: int, period: int) -> int:
        added = _changed_within(self.scale_up_events, now, period)
        removed = _changed_within(self.scale_down_events, now, period)
        return current - added + removed

    def _scale_up_limit(self, now: float, current: int) -> int:
        rules = self.behavior.scale_up
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_seconds)
            if policy.type == "Pods":
                proposals.append(start + policy.value)
            else:
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
        return min(proposals) if rules.select_policy == "Min" else max(proposals)

    def _scale_down_limit(self, now: float, current: int) -> int:
        rules = self.behavior.scale_down
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_seconds)
            if policy.type == "Pods":
                proposals.append(start - policy.value)
            else:
                proposals.append(int(start * (1 - policy.value / 100)))
        return max(proposals) if rules.select_policy == "Min" else min(proposals)
