"""The chart's probes replayed against a real gateway while Triton is down.

The startup, readiness and liveness probes of the gateway container are read from the rendered
default and production scenarios (health service name, period, timeout, failure threshold)
and polled exactly so, as the kubelet would, while the local stack goes through a Triton
outage longer than the old restart cascade (3 liveness failures x 10 s) and a gateway start
with Triton down. Liveness and startup must never reach their failure thresholds (a restart
would follow: the CrashLoopBackOff this replaces); readiness must go NOT_SERVING once the
dependency watch gives up and SERVING soon after Triton answers again.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waiting import pause, wait_until

from services.cli.stack import Ports, Stack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helm"))
from chart_support import env_of, objects, service_container

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 40.0  # longer than the 3 x 10 s liveness budget that used to restart gateways
SCENARIOS = ("default", "gpu-production")


@dataclass(frozen=True)
class Probe:
    scenario: str
    kind: str
    service: str
    period: float
    timeout: float
    failure_threshold: int


@dataclass
class Replay:
    """One probe polled at its period; ``samples`` are (monotonic time, succeeded)."""

    probe: Probe
    port: int
    samples: list[tuple[float, bool]] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(service=self.probe.service),
                        timeout=self.probe.timeout,
                    )
                    ok = reply.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    ok = False
                self.samples.append((started, ok))
                stop.wait(max(0.0, self.probe.period - (time.monotonic() - started)))

    def longest_failure_run(self) -> int:
        longest = run = 0
        for _, ok in self.samples:
            run = 0 if ok else run + 1
            longest = max(longest, run)
        return longest

    def first_failure_after(self, moment: float) -> float | None:
        return next((t for t, ok in self.samples if t >= moment and not ok), None)


def _gateway_probes() -> tuple[list[Probe], dict[str, str]]:
    probes, env = [], {}
    for scenario in SCENARIOS:
        gateway = service_container(objects(scenario), "gateway")
        env[scenario] = env_of(gateway)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec: dict[str, Any] = gateway[kind]
            probes.append(
                Probe(
                    scenario,
                    kind,
                    spec["grpc"].get("service", ""),
                    float(spec.get("periodSeconds", 10)),
                    float(spec.get("timeoutSeconds", 1)),
                    int(spec.get("failureThreshold", 3)),
                )
            )
    return probes, env["default"]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[Probe]]]:
    probes, env = _gateway_probes()
    stack = Stack(
        run_dir=tmp_path_factory.mktemp("probe-replay"),
        ports=Ports.free(),
        extra_env={
            name: env[name]
            for name in ("IMAGING_PEER_UNREACHABLE_SECONDS", "IMAGING_PEER_PROBE_INTERVAL_SECONDS")
        },
    )
    stack.start()
    try:
        yield stack, probes
    finally:
        stack.stop()


def _polling(stack: Stack, probes: list[Probe]) -> tuple[list[Replay], threading.Event]:
    stop = threading.Event()
    replays = [Replay(p, stack.ports.health["gateway"]) for p in probes]
    for replay in replays:
        threading.Thread(target=replay.run, args=(stop,), daemon=True).start()
    return replays, stop


def _wait_serving(port: int, deadline: float) -> float:
    """When the gateway's overall status (its readiness) is SERVING; fails at ``deadline``."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> float:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return 0.0
            return time.monotonic() if status == health_pb2.HealthCheckResponse.SERVING else 0.0

        return wait_until(serving, deadline - time.monotonic(), "the gateway never became ready")


def _samples_since(replays: list[Replay], moment: float, count: int = 2) -> None:
    """Wait until every probe has ``count`` samples taken at or after ``moment``."""
    wait_until(
        lambda: all(sum(t >= moment for t, _ in r.samples) >= count for r in replays),
        60,
        f"not every probe sampled {count} times",
    )


def test_a_triton_outage_takes_the_gateway_out_of_rotation_and_never_restarts_it(
    replayed: tuple[Stack, list[Probe]],
) -> None:
    stack, probes = replayed
    unreachable = float(stack.extra_env["IMAGING_PEER_UNREACHABLE_SECONDS"])
    interval = float(stack.extra_env["IMAGING_PEER_PROBE_INTERVAL_SECONDS"])
    running = [p for p in probes if p.kind != "startupProbe"]
    replays, stop = _polling(stack, running)
    try:
        _samples_since(replays, 0.0)  # samples on both sides of the outage
        down = time.monotonic()
        stack.kill("tritonserver")
        pause(OUTAGE_SECONDS, "the outage lasts this long, by design")
        stack.restart_triton()
        answering = time.monotonic()
        ready = _wait_serving(stack.ports.health["gateway"], answering + 30)
        _samples_since(replays, ready)  # samples on both sides of the outage
    finally:
        stop.set()
    assert ready - answering <= 5.0
    for replay in replays:
        probe = replay.probe
        assert len(replay.samples) >= OUTAGE_SECONDS / probe.period
        if probe.kind == "livenessProbe":
            assert replay.longest_failure_run() == 0, probe
        else:  # readiness: out of rotation once the watch gives up, for the whole outage
            first = replay.first_failure_after(down)
            assert first is not None, probe
            assert first - down <= unreachable + interval + probe.period + 1.0, probe
            assert replay.longest_failure_run() >= probe.failure_threshold, probe
            assert replay.samples[-1][1], probe  # back in rotation


def test_a_gateway_starting_while_triton_is_down_passes_startup_and_waits_for_readiness(
    replayed: tuple[Stack, list[Probe]],
) -> None:
    stack, probes = replayed
    stack.kill("gateway", 15)  # SIGTERM: a new gateway version rolling out
    stack.kill("tritonserver")
    stack.start_service("gateway")
    replays, stop = _polling(stack, probes)
    try:
        startups = [r for r in replays if r.probe.kind == "startupProbe"]
        budget = min(r.probe.period * r.probe.failure_threshold for r in startups)
        wait_until(
            lambda: all(any(ok for _, ok in r.samples) for r in startups),
            budget,
            "startup probe failed its whole budget",
        )
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports.health['gateway']}") as channel:
            overall = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        assert overall.status != health_pb2.HealthCheckResponse.SERVING  # no Triton: not ready
        stack.restart_triton()
        answering = time.monotonic()
        ready = _wait_serving(stack.ports.health["gateway"], answering + 30)
    finally:
        stop.set()
    assert ready - answering <= 5.0
    for replay in replays:
        if replay.probe.kind in ("startupProbe", "livenessProbe"):
            assert replay.longest_failure_run() < replay.probe.failure_threshold, replay.probe
