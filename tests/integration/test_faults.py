"""Faults with real processes: tritonserver killed under load (bounds are generous so a slow
CI machine does not flake; exact figures come from load_tests/faults.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from synthetic import chest_image

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc, postprocessor_pb2_grpc
from services.cli.stack import Ports, Stack

pytestmark = pytest.mark.integration

DEADLINE = 5.0
SERVING, NOT_SERVING = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(run_dir=tmp_path_factory.mktemp("faults"), ports=Ports.free())
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _status(stack: Stack) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.health['gateway']}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


def _wait_for(stack: Stack, status: int, limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if _status(stack) == status:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"gateway health not {status} within {limit} s")


def test_killing_triton_under_load_is_answered_in_time_not_ready_and_recovers(
    own_stack: Stack,
) -> None:
    study = [chest_image(np.full((64, 64), 90, np.uint8))]
    outcomes: list[tuple[float, str, float]] = []  # (sent at, code, seconds to answer)
    stop = threading.Event()

    def load() -> None:
        with grpc.insecure_channel(own_stack.gateway_address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    stub.Analyze(gateway_pb2.AnalyzeRequest(instances=study), timeout=DEADLINE)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                outcomes.append((sent, code, time.monotonic() - sent))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        assert _status(own_stack) == SERVING
        killed = time.monotonic()
        os.killpg(own_stack.pids["tritonserver"], signal.SIGKILL)
        not_serving_after = _wait_for(own_stack, NOT_SERVING, 20.0)
        own_stack.restart_triton()
        restarted = time.monotonic()
        serving_after = _wait_for(own_stack, SERVING, 30.0)
        time.sleep(2.0)  # traffic after the recovery
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    recovered = restarted + serving_after
    before = [o for o in outcomes if o[0] + o[2] < killed]  # answered before the kill
    during = [o for o in outcomes if killed <= o[0] < recovered]
    after = [o for o in outcomes if o[0] >= recovered + 0.5]
    assert before and during and after
    assert all(code == "OK" for _, code, _ in before), {c for _, c, _ in before}
    assert all(took <= DEADLINE + 1.0 for _, _, took in outcomes), "a call outlived its deadline"
    assert {code for _, code, _ in during} <= {"OK", "UNAVAILABLE"}
    assert all(code == "OK" for _, code, _ in after), {c for _, c, _ in after}
    assert not_serving_after <= 10.0  # the goal is 5 s (IMAGING_PEER_UNREACHABLE_SECONDS=3)


def test_sigterm_to_the_gateway_finishes_every_study_in_flight(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    service = "gateway"
    from concurrent.futures import ThreadPoolExecutor

    from synthetic import brain_series

    stack = Stack(run_dir=tmp_path_factory.mktemp(f"sigterm-{service}"), ports=Ports.free())
    stack.start()
    try:
        series = brain_series()  # ~1 s of work per study: still running when the signal comes

        channels = [grpc.insecure_channel(stack.gateway_address) for _ in range(4)]
        for channel in channels:  # connected before the studies go out
            gateway_pb2_grpc.GatewayStub(channel).ListPipelines(
                gateway_pb2.ListPipelinesRequest(), timeout=30
            )

        def analyze(channel: grpc.Channel) -> str:
            with channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                try:
                    reply = stub.Analyze(gateway_pb2.AnalyzeRequest(instances=series), timeout=60)
                except grpc.RpcError as err:
                    return err.code().name
                return "OK" if reply.measurements else "EMPTY"

        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(analyze, channel) for channel in channels]
            # Four 64-slice studies at once take several seconds here; 1.5 s after sending,
            # all four are inside the gateway and none is finished.
            time.sleep(1.5)
            assert not any(call.done() for call in calls)
            os.killpg(stack.pids[service], signal.SIGTERM)
            codes = [call.result(timeout=120) for call in calls]
    finally:
        stack.stop()
    assert codes == ["OK"] * 4


class _SlowPostprocessor(postprocessor_pb2_grpc.PostprocessorServicer):
    """A postprocessor that hangs (a real gRPC server in this process): it records when the
    gateway cancels the call."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled_at: float | None = None

    def Postprocess(self, request: object, context: grpc.ServicerContext) -> object:  # noqa: N802
        self.started.set()
        while context.is_active() and self.cancelled_at is None:
            time.sleep(0.01)
        self.cancelled_at = time.monotonic()
        context.abort(grpc.StatusCode.CANCELLED, "gone")


def test_a_hung_postprocessor_gives_deadline_exceeded_at_the_clients_deadline_and_is_cancelled(
    stack: Stack,
) -> None:
    from concurrent import futures

    from services.common.settings import GatewaySettings
    from services.gateway import server as gateway_server

    slow = _SlowPostprocessor()
    hung = grpc.server(futures.ThreadPoolExecutor(2))
    postprocessor_pb2_grpc.add_PostprocessorServicer_to_server(slow, hung)
    hung_port = hung.add_insecure_port("127.0.0.1:0")
    hung.start()
    local = "127.0.0.1"
    gateway = gateway_server.start(
        GatewaySettings(
            port=0,
            metrics_port=0,
            decoder_address=f"{local}:{stack.ports.decoder}",
            preprocessor_address=f"{local}:{stack.ports.preprocessor}",
            postprocessor_address=f"{local}:{hung_port}",
            triton_address=stack.triton_grpc_address,
            pixel_exchange_dir=stack.pixel_exchange_dir,
        )
    )
    try:
        with grpc.insecure_channel(f"{local}:{gateway.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            study = [chest_image(np.full((64, 64), 90, np.uint8))]
            sent = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Analyze(gateway_pb2.AnalyzeRequest(instances=study), timeout=3.0)
            answered = time.monotonic() - sent
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert slow.started.is_set()
        assert answered < 3.0 + 1.0  # at the deadline, not after the call timeout (60 s)
        deadline = time.monotonic() + 5
        while slow.cancelled_at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.cancelled_at is not None, "the inner call went on after the client gave up"
        assert slow.cancelled_at - sent < 3.0 + 1.0
    finally:
        gateway.stop(0)
        hung.stop(0)


def test_a_thousand_requests_mixing_broken_files_with_good_ones(
    stack: Stack, dicom_dir: Path
) -> None:
    """Bad input costs its own request only: every good study succeeds and no service dies."""
    from concurrent.futures import ThreadPoolExecutor

    seeds = [
        (dicom_dir / name).read_bytes()
        for name in (
            "pydicom-testfiles/CT_small.dcm",
            "pydicom-testfiles/MR_small_RLE.dcm",
            "pydicom-testfiles/JPEG2000.dcm",
            "pydicom-testfiles/SC_rgb_jpeg_gdcm.dcm",
        )
    ]
    good = chest_image(np.full((64, 64), 90, np.uint8))
    rng = np.random.default_rng(7)

    def broken() -> bytes:
        data = bytearray(seeds[int(rng.integers(len(seeds)))])
        kind, at = int(rng.integers(3)), int(rng.integers(132, len(data)))
        if kind == 0:
            for position in rng.integers(132, len(data), 16):
                data[int(position)] ^= 0xFF
        elif kind == 1:
            del data[at:]
        else:
            data[at:at] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
        return bytes(data)

    requests = [(i % 4 == 0, good if i % 4 == 0 else broken()) for i in range(1000)]
    pids = dict(stack.pids)

    def send(item: tuple[bool, bytes]) -> tuple[bool, str]:
        is_good, data = item
        with grpc.insecure_channel(stack.gateway_address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            try:
                stub.Analyze(gateway_pb2.AnalyzeRequest(instances=[data]), timeout=60)
            except grpc.RpcError as err:
                return is_good, err.code().name
        return is_good, "OK"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, requests))
    good_codes = {code for is_good, code in results if is_good}
    bad_codes = {code for is_good, code in results if not is_good}
    assert good_codes == {"OK"}, good_codes
    assert bad_codes <= {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}
    assert "INVALID_ARGUMENT" in bad_codes
    for pid in pids.values():
        os.kill(pid, 0)  # still the same process: nothing restarted
    assert stack.pids == pids
