"""Bounded work of the thread-pool services: the limiter alone, then a real gRPC server built
by services.common.server.start with a servicer that blocks until released."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from waiting import wait_until

from services.api.imaging.v1 import postprocessor_pb2, postprocessor_pb2_grpc
from services.common import server
from services.common.admission import Limiter
from services.common.errors import Overloaded
from services.common.remote_errors import error_kind
from services.common.settings import ServiceSettings

QUEUED_POSTPROCESSOR = ("imaging_rpcs_queued", {"service": "postprocessor"})


def _hold(limiter: Limiter, entered: threading.Event, release: threading.Event) -> None:
    with limiter.slot():
        entered.set()
        release.wait(10)


def test_calls_beyond_running_plus_queued_are_refused_at_once() -> None:
    limiter = Limiter("decoder", running=1, queued=1)
    release = threading.Event()
    first, second = threading.Event(), threading.Event()
    holders = [
        threading.Thread(target=_hold, args=(limiter, first, release)),
        threading.Thread(target=_hold, args=(limiter, second, release)),
    ]
    holders[0].start()
    assert first.wait(5)
    holders[1].start()
    wait_until(lambda: limiter._waiting, 5, "the second holder never queued")
    assert not second.is_set()
    with pytest.raises(Overloaded, match="the decoder is at capacity"), limiter.slot():
        pass
    release.set()
    for holder in holders:
        holder.join(5)
    assert second.is_set()  # the queued call ran once the slot was free
    with limiter.slot():  # and the limiter is empty again
        pass


def test_a_failing_call_gives_its_slot_back() -> None:
    limiter = Limiter("preprocessor", running=1, queued=0)
    with pytest.raises(RuntimeError), limiter.slot():
        raise RuntimeError("boom")
    with limiter.slot():
        pass


@pytest.mark.parametrize(("running", "queued"), [(0, 1), (1, -1)])
def test_nonsense_bounds_are_refused(running: int, queued: int) -> None:
    with pytest.raises(ValueError, match="need running"):
        Limiter("x", running, queued)


class _Blocking(postprocessor_pb2_grpc.PostprocessorServicer):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def Postprocess(self, request: object, context: grpc.ServicerContext) -> object:  # noqa: N802
        self.entered.release()
        self.release.wait(20)
        return postprocessor_pb2.PostprocessResponse()


def test_a_full_server_refuses_with_overloaded_and_still_answers_health_checks() -> None:
    blocking = _Blocking()
    name = postprocessor_pb2.DESCRIPTOR.services_by_name["Postprocessor"].full_name
    running = server.start(
        "postprocessor",
        ServiceSettings(port=0, metrics_port=0, workers=2, max_queued_rpcs=1),
        lambda srv: postprocessor_pb2_grpc.add_PostprocessorServicer_to_server(blocking, srv),
        [name],
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = postprocessor_pb2_grpc.PostprocessorStub(channel)
            request = postprocessor_pb2.PostprocessRequest()
            held = [stub.Postprocess.future(request, timeout=30) for _ in range(2)]
            for _ in held:
                assert blocking.entered.acquire(timeout=10)
            queued = stub.Postprocess.future(request, timeout=30)
            wait_until(  # in the limiter's queue, not refused
                lambda: REGISTRY.get_sample_value(*QUEUED_POSTPROCESSOR) == 1,
                10,
                "the third call never queued",
            )
            assert not queued.done()
            sent = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                stub.Postprocess(request, timeout=30)
            assert time.monotonic() - sent < 5  # at once, not after the held calls
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_kind(refused.value) == "OVERLOADED"
            assert "at capacity" in (refused.value.details() or "")
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            blocking.release.set()
            for call in [*held, queued]:
                call.result(timeout=10)
    finally:
        blocking.release.set()
        running.stop(0)
