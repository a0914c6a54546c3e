"""The Triton autoscaling signal, checked on counters recorded from real tritonservers.

tests/helm/data/triton_series.json holds the raw per-pod counters that
load_tests/record_triton_series.py scraped every 2 s from three local (CPU) tritonservers under
stepped closed-loop load: 1x, 2x and 4x the base client count on two servers with the third
idle (a new pod the gateways' connections have not reached), then the same totals on all three.
Nothing here needs a server: each test turns the counters into what the HPA sees, the PromQL of
the adapter rules (rate() over the rule's window, with Prometheus' extrapolation) per pod at
each instant, and runs that through the HPA's arithmetic (hpa_formula.py) with the chart's own
target, replica bounds and behavior from values.yaml.

What the recording shows (numbers in the chart README, "Autoscaling"):
- requests in flight (triton_inflight_requests) add up to the load: their sum over the pods
  follows the client count, an idle pod reports 0, and the sum stays when the load spreads
  over a third pod, so ceil(sum / target) is the count the load needs, before and after the
  new pod takes traffic;
- queue time per request stays far below the queue-time target the chart used to ship while
  the servers are saturated (throughput flat from 2x to 4x), so an HPA on it never asks for a
  second pod;
- under the HPA's arithmetic (ceil(n x mean / target) = ceil(sum / target)) an idle pod's 0
  cancels its own count for either metric: the idle pod alone lowers neither metric's desired
  count. The recording shows that too; it is the HPA, not the metric, that absorbs it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from chart_support import TESTS_DIR, adapter_rules_file, merged_values
from hpa_formula import (
    SYNC_PERIOD_SECONDS,
    TOLERANCE,
    Autoscaler,
    Behavior,
    Policy,
    ScalingRules,
    external_average_replicas,
    external_value_replicas,
    pods_metric_replicas,
)

DATA = TESTS_DIR / "data" / "triton_series.json"
IDLE_POD = "triton-2"
LEVELS = (1, 2, 4)
# The target the chart shipped for triton_queue_time_per_request_us (ci/gpu-production and
# ci/gpu-keda): 20 ms of queue time per request.
QUEUE_TARGET_US = 20000.0
# How long the step simulation holds each load level (replaying that level's recorded
# instants in order, over and over): long enough for one pod per 120 s to reach any count here.
HOLD_SECONDS = 1200


@cache
def recording() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DATA.read_text())
    return loaded


def phase(name: str) -> dict[str, Any]:
    (found,) = [p for p in recording()["phases"] if p["name"] == name]
    return found


def two_loaded(level: int) -> dict[str, Any]:
    return phase(f"2 loaded + 1 idle, {level}x")


def three_loaded(level: int) -> dict[str, Any]:
    return phase(f"3 loaded, {level}x")


def rule_window(metric: str) -> float:
    """The rate() window of an adapter rule, in seconds ([1m] -> 60)."""
    (rule,) = [r for r in adapter_rules_file()["rules"] if r["name"]["as"] == metric]
    windows = set(re.findall(r"\[(\d+)m\]", rule["metricsQuery"]))
    assert len(windows) == 1, rule["metricsQuery"]
    return 60.0 * int(windows.pop())


def prom_rate(times: list[float], values: list[float], at: float, window: float) -> float | None:
    """PromQL rate(counter[window]) evaluated at ``at`` (Prometheus' extrapolatedRate)."""
    picked = [(t, v) for t, v in zip(times, values, strict=True) if at - window < t <= at]
    if len(picked) < 2:
        return None
    increase = picked[-1][1] - picked[0][1]
    for (_, before), (_, after) in itertools.pairwise(picked):
        if after < before:  # a counter reset
            increase += before
    first_t, first_v = picked[0]
    last_t = picked[-1][0]
    sampled = last_t - first_t
    average_gap = sampled / (len(picked) - 1)
    threshold = average_gap * 1.1
    to_start = first_t - (at - window)
    to_end = at - last_t
    if to_start >= threshold:
        to_start = average_gap / 2
    if increase > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / increase))
    if to_end >= threshold:
        to_end = average_gap / 2
    return increase * ((sampled + to_start + to_end) / sampled) / window


def _series(pod: str, name: str) -> tuple[list[float], list[float]]:
    samples = recording()["samples"][pod]
    return samples["t"], samples[name]


def inflight(pod: str, at: float) -> float | None:
    """triton_inflight_requests of one pod: rate(nv_inference_request_duration_us) / 1e6."""
    rate = prom_rate(
        *_series(pod, "nv_inference_request_duration_us"),
        at,
        rule_window("triton_inflight_requests"),
    )
    return None if rate is None else rate / 1e6


def queue_time_us(pod: str, at: float) -> float | None:
    """triton_queue_time_per_request_us of one pod (clamp_min(successes, 0.001) as the rule)."""
    window = rule_window("triton_queue_time_per_request_us")
    queued = prom_rate(*_series(pod, "nv_inference_queue_duration_us"), at, window)
    done = prom_rate(*_series(pod, "nv_inference_request_success"), at, window)
    if queued is None or done is None:
        return None
    return queued / max(done, 0.001)


Metric = Callable[[str, float], float | None]


def steady_instants(p: dict[str, Any], metric: str) -> list[float]:
    """Scrape instants whose whole rate window lies inside the phase (the load held steady)."""
    start = p["start"] + rule_window(metric)
    times = recording()["samples"][recording()["pods"][0]]["t"]
    return [t for t in times if start <= t <= p["end"]]


def values_at(metric: Metric, pods: list[str], at: float) -> list[float]:
    found = [metric(pod, at) for pod in pods]
    assert all(v is not None for v in found), (pods, at)
    return [float(v) for v in found if v is not None]


def total_inflight(p: dict[str, Any]) -> list[float]:
    """Sum over the three pods of triton_inflight_requests at each steady instant of a phase."""
    pods = recording()["pods"]
    return [
        sum(values_at(inflight, pods, t)) for t in steady_instants(p, "triton_inflight_requests")
    ]


def hpa_settings() -> tuple[float, int, int, Behavior]:
    """Target, min and max replicas, and behavior of the Triton HPA, from values.yaml."""
    autoscaling = merged_values("default")["triton"]["autoscaling"]
    assert autoscaling["hpa"]["metricName"] == "triton_inflight_requests"
    return (
        float(autoscaling["hpa"]["targetAverageValue"]),
        int(autoscaling["minReplicas"]),
        int(autoscaling["maxReplicas"]),
        Behavior.from_spec(autoscaling["behavior"]),
    )


def needed(total: float, target: float, low: int, high: int) -> int:
    return min(max(math.ceil(total / target), low), high)


def covers(replicas: int, total: float, target: float) -> bool:
    """Whether ``replicas`` pods serve ``total`` as the HPA judges it: the per-pod mean within
    the tolerance above the target (the HPA does not add a pod for less)."""
    return total / (replicas * target) <= 1 + TOLERANCE


# --- the recording ----------------------------------------------------------------------------


def test_recording_is_complete_clean_and_small() -> None:
    data = recording()
    assert DATA.stat().st_size < 200_000
    assert data["pods"] == ["triton-0", "triton-1", "triton-2"]
    assert data["scrape_interval_seconds"] <= 5
    names = [p["name"] for p in data["phases"]]
    assert names == [f"2 loaded + 1 idle, {n}x" for n in LEVELS] + [
        f"3 loaded, {n}x" for n in LEVELS
    ]
    base = data["base_clients"]
    for level in LEVELS:
        two, three = two_loaded(level), three_loaded(level)
        assert sum(two["clients"].values()) == sum(three["clients"].values()) == base * level
        assert two["clients"][IDLE_POD] == 0
        assert min(three["clients"].values()) > 0
    for p in data["phases"]:
        # A failed call means a server (its python backend stub) broke: the recorder refuses
        # to write such a run.
        assert p["errors"] == 0, p
        assert p["completed"] > 0
        assert p["end"] - p["start"] >= rule_window("triton_inflight_requests") + 15
    for pod in data["pods"]:
        samples = data["samples"][pod]
        lengths = {len(v) for v in samples.values()}
        assert len(lengths) == 1, pod
        gaps = [b - a for a, b in zip(samples["t"], samples["t"][1:], strict=False)]
        assert max(gaps) < 3 * data["scrape_interval_seconds"], pod


def test_the_idle_pod_serves_nothing_until_the_load_spreads() -> None:
    last_idle = two_loaded(4)["end"]
    times, served = _series(IDLE_POD, "nv_inference_request_success")
    idle = [v for t, v in zip(times, served, strict=True) if t <= last_idle]
    assert idle[0] == idle[-1]
    for level in LEVELS:
        for at in steady_instants(two_loaded(level), "triton_inflight_requests"):
            assert inflight(IDLE_POD, at) == 0.0  # 0, not missing: the rule reports idle pods
            assert queue_time_us(IDLE_POD, at) == 0.0


# --- the HPA arithmetic itself ----------------------------------------------------------------


def test_hpa_formula_follows_the_controller() -> None:
    # ceil(n x mean / target), or the current count within the 10% tolerance.
    assert pods_metric_replicas([8.0, 8.0], 4.0, 2) == 4
    assert pods_metric_replicas([4.3, 4.3], 4.0, 2) == 2
    assert pods_metric_replicas([4.5, 4.5], 4.0, 2) == 3
    assert pods_metric_replicas([1.0, 1.0, 1.0], 4.0, 3) == 1
    # A pod without a value counts as 0 on a scale-up, as the target on a scale-down.
    assert pods_metric_replicas([9.0], 4.0, 2, missing=1) == 3
    assert pods_metric_replicas([1.0], 4.0, 2, missing=1) == 2
    # KEDA: Value multiplies the ready pods, AverageValue divides the total.
    assert external_value_replicas(30000, 20000, ready=2, current=2) == 3
    assert external_value_replicas(30000, 20000, ready=3, current=3) == 5
    assert external_average_replicas(13.0, 4.0, current=2) == 4
    # Policies: at most one pod per 120 s up, after 60 s of stabilization.
    behavior = Behavior(
        ScalingRules(60, (Policy("Pods", 1, 120),)),
        ScalingRules(600, (Policy("Pods", 1, 300),)),
    )
    hpa = Autoscaler(1, 4, behavior, replicas=1)
    # The load rises at t=300: the recommendations of 1 within the last 60 s (strictly after
    # the cutoff) hold the count until t=345, then one pod per 120 s.
    counts = {t: hpa.sync(t, 1 if t < 300 else 4) for t in range(0, 901, 15)}
    assert counts[330] == 1 and counts[345] == 2
    assert counts[450] == 2 and counts[465] == 3
    assert counts[570] == 3 and counts[585] == 4 and counts[900] == 4
    # A Percent policy (the services' HPAs): doubling per 60 s.
    doubling = Behavior(
        ScalingRules(0, (Policy("Percent", 100, 60),)), ScalingRules(300, (Policy("Pods", 1, 60),))
    )
    hpa = Autoscaler(2, 20, doubling, replicas=2)
    assert [hpa.sync(t, 16) for t in (0, 15, 60, 75)] == [4, 4, 8, 8]
    # Scale-down waits for the whole window of higher recommendations.
    hpa = Autoscaler(1, 4, behavior, replicas=4)
    downs = [hpa.sync(t, 1) if t else hpa.sync(t, 4) for t in range(0, 901, 15)]
    assert downs[: 600 // 15] == [4] * (600 // 15)
    assert downs[-1] < 4


# --- the signal on recorded load ----------------------------------------------------------------


def test_requests_in_flight_add_up_to_the_load() -> None:
    """Sum over the pods follows the client count step by step, in both layouts."""
    for layout in (two_loaded, three_loaded):
        totals = {level: statistics.mean(total_inflight(layout(level))) for level in LEVELS}
        clients = {level: sum(layout(level)["clients"].values()) for level in LEVELS}
        for level in LEVELS:
            # Closed loop: never more in Triton than there are clients.
            assert 0 < totals[level] <= clients[level]
        assert totals[1] < totals[2] < totals[4]
        assert 1.5 <= totals[2] / totals[1] <= 3.0, totals
        assert 1.5 <= totals[4] / totals[2] <= 3.0, totals


@pytest.mark.parametrize("level", LEVELS)
def test_an_idle_new_pod_cancels_out_for_either_metric(level: int) -> None:
    """The two loaded pods without, then with, the idle third (a new pod no connection has
    reached yet). The HPA computes ceil(n x mean / target) = ceil(sum / target), so the idle
    pod's 0 cancels its own count: with it the HPA asks what the load needs, for requests in
    flight and for queue time alike. Only inside the 10% tolerance does the count stay at the
    three pods there are (seen at 4x: 12.6 in flight, 2 pods ask for 4, 3 stay at 3), which
    still covers the load as the HPA judges it. The recording does not show the idle pod
    lowering the queue-time count either: that is the HPA's arithmetic, not the metric."""
    target = hpa_settings()[0]
    loaded = ["triton-0", "triton-1"]
    for metric, goal in ((inflight, target), (queue_time_us, QUEUE_TARGET_US)):
        for at in steady_instants(two_loaded(level), "triton_inflight_requests"):
            busy = values_at(metric, loaded, at)
            total = sum(busy)
            without = pods_metric_replicas(busy, goal, 2)
            with_idle = pods_metric_replicas([*busy, 0.0], goal, 3)
            where = (metric.__name__, level, at, busy)
            assert covers(with_idle, total, goal), where
            if abs(total / (3 * goal) - 1) > TOLERANCE:
                assert with_idle == math.ceil(total / goal), where
            else:
                assert with_idle == 3, where
            if abs(total / (2 * goal) - 1) > TOLERANCE:
                assert without == math.ceil(total / goal), where


def test_queue_time_never_asks_for_what_the_load_needs() -> None:
    """The control: saturated servers, yet queue time stays far below its shipped target, so
    an HPA on it stays at one pod while requests in flight ask for more at every step."""
    target, low, high, _ = hpa_settings()
    pods = recording()["pods"]
    throughput = {
        level: two_loaded(level)["completed"] / recording()["phase_seconds"] for level in LEVELS
    }
    # Saturated: four times the clients brings well under four times the throughput.
    assert throughput[4] < 2.5 * throughput[1], throughput
    for layout in (two_loaded, three_loaded):
        for level in LEVELS:
            for at in steady_instants(layout(level), "triton_inflight_requests"):
                queue = values_at(queue_time_us, pods, at)
                assert max(queue) < QUEUE_TARGET_US / 3, (level, at, queue)
                assert pods_metric_replicas(queue, QUEUE_TARGET_US, 3) == 1
        desired = {
            level: needed(statistics.mean(total_inflight(layout(level))), target, low, high)
            for level in LEVELS
        }
        assert desired[1] < desired[4], desired


@pytest.mark.parametrize("level", LEVELS)
def test_the_count_holds_when_the_new_pod_takes_traffic(level: int) -> None:
    """Two loaded + one idle, then the same clients over all three: the total in flight, and
    so the HPA's count, stays (no scale-down and re-scale-up once the new pod is reached)."""
    target, low, high, _ = hpa_settings()
    before = statistics.mean(total_inflight(two_loaded(level)))
    after = statistics.mean(total_inflight(three_loaded(level)))
    assert abs(after - before) <= 0.35 * before, (before, after)
    assert abs(needed(after, target, low, high) - needed(before, target, low, high)) <= 1


@dataclass
class Step:
    level: int
    start: float
    end: float
    replicas: list[int]


def simulate(levels: list[int]) -> list[Step]:
    """The Triton HPA of values.yaml on triton_inflight_requests through load steps.

    Each level is held for HOLD_SECONDS by replaying, one per 15 s sync, the total in flight
    recorded at that level's steady instants (two loaded pods + the idle one), in order and
    over again. The total is spread evenly over the simulated replicas (what the connection
    age gives; test_the_count_holds_when_the_new_pod_takes_traffic checks the total does not
    depend on the spread), and the HPA sees each pod's share."""
    target, low, high, behavior = hpa_settings()
    hpa = Autoscaler(low, high, behavior, replicas=low)
    now = 0.0
    steps = []
    for level in levels:
        recorded = total_inflight(two_loaded(level))
        step = Step(level, now, now + HOLD_SECONDS, [])
        for i in range(HOLD_SECONDS // SYNC_PERIOD_SECONDS):
            total = recorded[i % len(recorded)]
            current = hpa.replicas
            desired = pods_metric_replicas([total / current] * current, target, current)
            step.replicas.append(hpa.sync(now, desired))
            now += SYNC_PERIOD_SECONDS
        steps.append(step)
    return steps


def test_load_steps_reach_the_needed_count_without_scaling_down() -> None:
    target, low, high, behavior = hpa_settings()
    steps = simulate([1, 2, 4, 1])
    up = [r for step in steps[:3] for r in step.replicas]
    # Rising load: the count never goes down on the way up.
    assert all(b >= a for a, b in itertools.pairwise(up)), up
    for step in steps[:3]:
        totals = total_inflight(two_loaded(step.level))
        final = step.replicas[-1]
        # Enough pods for the level (within the tolerance), and no more than its peak needs.
        assert covers(final, statistics.mean(totals), target), (step.level, final)
        assert final <= needed(max(totals), target, low, high), (step.level, final)
        # Reached well inside the hold: one pod per 120 s after a 60 s window.
        reached = step.replicas.index(final) * SYNC_PERIOD_SECONDS
        assert reached <= 60 + 120 * (final - step.replicas[0]) + 2 * SYNC_PERIOD_SECONDS
    assert steps[0].replicas[-1] < steps[1].replicas[-1] < steps[2].replicas[-1]
    # Back to 1x: nothing is removed inside the scale-down stabilization window, then at most
    # one pod per policy period.
    window = behavior.scale_down.stabilization_window_seconds
    drop = steps[3].replicas
    held = drop[: window // SYNC_PERIOD_SECONDS - 1]
    assert set(held) == {steps[2].replicas[-1]}, held
    assert drop[-1] < steps[2].replicas[-1]
    period = behavior.scale_down.policies[0].period_seconds
    removals = [i for i, (a, b) in enumerate(itertools.pairwise(drop)) if b < a]
    assert all((b - a) * SYNC_PERIOD_SECONDS >= period for a, b in itertools.pairwise(removals))
