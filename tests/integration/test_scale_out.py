"""Triton scale-out as a headless Service does it: pods joining and leaving one DNS name.

Three real tritonservers on 127.0.0.1, .2 and .3 (the same ports; Linux routes all of 127/8 to
loopback) behind a name served by a loopback DNS server this test controls, called through the
gateway's own TritonClient (round_robin, keepalive, re-resolution: services/gateway/clients.py).
gRPC resolves a name again only when a connection ends, so without a maximum connection age on
Triton a pod added under load gets almost nothing: the control arm shows it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSHandler, DNSRecord, DNSServer
from ports import for_attempt, pick_port, start_all
from waiting import pause, wait_until

from services.common.errors import PlatformError
from services.gateway.clients import ChannelTuning, TritonClient
from services.triton_local.launch import connection_flags, start_tritonserver

pytestmark = pytest.mark.integration

NAME = "triton.scale.test"
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
MAX_AGE_SECONDS = 3.0  # short for the test; the chart's default is 30 s
TUNING = ChannelTuning(
    keepalive_seconds=2.0, keepalive_timeout_seconds=1.0, dns_refresh_seconds=1.0
)
CLIENTS = 8
MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository"


class Records(BaseResolver):  # type: ignore[misc]
    """A records of NAME, changed by the test as Kubernetes changes a headless Service's."""

    def __init__(self) -> None:
        self.addresses: list[str] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        if request.q.qtype == QTYPE.A and str(request.q.qname).rstrip(".") == NAME:
            for address in list(self.addresses):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[Records, int]]:
    records = Records()
    server = DNSServer(records, address="127.0.0.1", port=0)
    server.start_thread()
    yield records, server.server.server_address[1]
    server.stop()


def _pick_port_on_all(hosts: tuple[str, ...]) -> int:
    """A port free on every host a moment ago (if one is taken before the fleet binds it,
    start_all starts the fleet again on new ones)."""
    while True:
        port = pick_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue


@dataclass
class Fleet:
    """Three tritonservers, one per host, serving cxr_pneumonia on the same ports."""

    grpc_port: int
    metrics_port: int
    processes: dict[str, object] = field(default_factory=dict)

    def successes(self, host: str) -> float:
        url = f"http://{host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("nv_inference_request_success{")
        )

    def pid(self, host: str) -> int:
        return int(self.processes[host].pid)  # type: ignore[attr-defined]


@dataclass
class _FleetLaunch:
    """The three tritonservers on picked ports, started (and retried) together: start_all."""

    workdir: Path
    max_age: float | None
    name: str = f"tritonservers on {', '.join(HOSTS)}"
    running: Fleet = field(default_factory=lambda: Fleet(0, 0))
    http_port: int = 0

    def spawn(self, attempt: int) -> list[tuple[subprocess.Popen[bytes], Path]]:
        ports = [_pick_port_on_all(HOSTS) for _ in range(3)]
        self.running, self.http_port = Fleet(ports[0], ports[2]), ports[1]
        started = []
        for host in HOSTS:
            flags = [
                f"--grpc-address={host}",
                f"--grpc-port={ports[0]}",
                f"--http-address={host}",
                f"--http-port={ports[1]}",
                f"--metrics-address={host}",
                f"--metrics-port={ports[2]}",
                "--model-control-mode=explicit",
                "--load-model=cxr_pneumonia",
                "--exit-on-error=true",
                *connection_flags(self.max_age, 10.0, 1.0),
            ]
            # A retry in folders of its own: the stopped servers' stubs may hold their files.
            log = for_attempt(self.workdir / f"{host}.log", attempt)
            process, _ = start_tritonserver(
                for_attempt(self.workdir / host, attempt), MODEL_DIR, flags, log
            )
            self.running.processes[host] = process
            started.append((process, log))
        return started

    def ready(self) -> bool:
        return all(_ready(host, self.http_port) for host in HOSTS)

    def stop(self) -> None:
        for process in self.running.processes.values():
            with suppress(ProcessLookupError):  # one the test ended itself
                os.killpg(process.pid, signal.SIGCONT)  # type: ignore[attr-defined]
                os.killpg(process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            process.wait()  # type: ignore[attr-defined]


@contextmanager
def fleet(workdir: Path, max_age: float | None) -> Iterator[Fleet]:
    launch = _FleetLaunch(workdir, max_age)
    start_all([launch], 120)
    try:
        yield launch.running
    finally:
        launch.stop()


def _ready(host: str, http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/v2/health/ready", timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Load:
    """CLIENTS closed loops of one-image inferences; every outcome with its latency."""

    outcomes: list[tuple[float, float, str]] = field(default_factory=list)  # start, s, status
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, target: str) -> None:
        asyncio.run(self._run(target))

    async def _run(self, target: str) -> None:
        client = TritonClient(target, 20.0, tuning=TUNING)
        batch = np.zeros((1, 1, 28, 28), np.float32)

        async def loop() -> None:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    await client.infer("cxr_pneumonia", "1", "image", batch, ["logits"], 0, "")
                    status = "OK"
                except PlatformError as err:
                    status = err.code.name
                self.outcomes.append((start, time.monotonic() - start, status))

        await asyncio.gather(*(loop() for _ in range(CLIENTS)))
        await client.close()

    def failures(self) -> list[tuple[float, float, str]]:
        return [o for o in self.outcomes if o[2] != "OK"]


@contextmanager
def load(target: str) -> Iterator[Load]:
    running = Load()
    thread = threading.Thread(target=running.run, args=(target,), daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.stop.set()
        thread.join(60)


def _share_of_third(
    running: Fleet, records: Records, target: str, settle: float, window: float
) -> tuple[float, Load]:
    """Two pods under load, then the third joins the name: its share of calls during
    ``window`` seconds after ``settle`` seconds."""
    records.addresses = list(HOSTS[:2])
    with load(target) as calls:
        wait_for(lambda: len(calls.outcomes) > 50, 30)
        records.addresses = list(HOSTS)
        pause(settle, "the time the third pod is given to join, by design")
        before = [running.successes(h) for h in HOSTS]
        pause(window, "the measured window")
        after = [running.successes(h) for h in HOSTS]
    served = [b - a for a, b in zip(before, after, strict=True)]
    return served[2] / sum(served), calls


def wait_for(condition: Callable[[], object], timeout: float) -> None:
    wait_until(condition, timeout, "condition not met in time")


def test_a_pod_added_under_load_takes_its_share_and_one_removed_fails_no_call(
    dns: tuple[Records, int], tmp_path: Path
) -> None:
    records, port = dns
    with fleet(tmp_path, MAX_AGE_SECONDS) as running:
        target = f"dns://127.0.0.1:{port}/{NAME}:{running.grpc_port}"
        share, calls = _share_of_third(running, records, target, settle=8.0, window=8.0)
        print(f"third pod share with a connection age: {share:.1%}")
        assert share >= 0.25, share
        assert not calls.failures()

        # Removed as Kubernetes removes a pod: out of the name, then SIGTERM after the preStop
        # sleep (longer than the connection age, so every client has left it).
        with load(target) as calls:
            wait_for(lambda: len(calls.outcomes) > 50, 30)
            records.addresses = list(HOSTS[:2])
            pause(MAX_AGE_SECONDS + 2 * TUNING.dns_refresh_seconds, "the pod's preStop sleep")
            os.killpg(running.pid(HOSTS[2]), signal.SIGTERM)
            running.processes[HOSTS[2]].wait(30)  # type: ignore[attr-defined]
            count = len(calls.outcomes)
            wait_for(lambda: len(calls.outcomes) > count + 100, 30)
        assert not calls.failures(), calls.failures()[:5]

        # Frozen (a hung node): keepalive takes it out; no call waits for its deadline.
        records.addresses = list(HOSTS)
        with load(target) as calls:
            wait_for(lambda: len(calls.outcomes) > 50, 30)
            frozen = time.monotonic()
            os.killpg(running.pid(HOSTS[1]), signal.SIGSTOP)
            detect = TUNING.keepalive_seconds + TUNING.keepalive_timeout_seconds
            wait_for(lambda: time.monotonic() > frozen + detect + 2 and len(calls.outcomes) > 0, 30)
            late = len(calls.outcomes)
            wait_for(lambda: len(calls.outcomes) > late + 100, 30)
        os.killpg(running.pid(HOSTS[1]), signal.SIGCONT)
        assert not calls.failures(), calls.failures()[:5]
        assert max(seconds for _, seconds, _ in calls.outcomes) < detect + 3.0
        after = [s for start, s, _ in calls.outcomes if start > frozen + detect + 1]
        assert after and max(after) < 1.0  # calls then go to the live pods alone


def test_without_a_connection_age_a_pod_added_under_load_gets_almost_nothing(
    dns: tuple[Records, int], tmp_path: Path
) -> None:
    """The control arm: the same fleet and client, Triton without --grpc-max-connection-age."""
    records, port = dns
    with fleet(tmp_path, None) as running:
        target = f"dns://127.0.0.1:{port}/{NAME}:{running.grpc_port}"
        share, calls = _share_of_third(running, records, target, settle=8.0, window=8.0)
    print(f"third pod share without one: {share:.1%}")
    assert share < 0.05, share
    assert not calls.failures()
