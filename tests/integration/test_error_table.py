"""Every class of services.common.errors, provoked by a real Analyze through a gateway.

One row per way of causing an error; together the rows must cover every class of the one
exception tree, so a class added without a case here fails the coverage test. Each row checks
what a client sees: the class's status code, a google.rpc.ErrorInfo naming the class's kind
with a request id, the human reason for caller faults, and for platform faults only a request
id to quote (the reason goes to the operator's log). Afterwards that gateway goes on serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from error_cases import (
    BAD_COLUMN,
    BAD_INPUT,
    BAD_INPUT_NAME,
    MISSING_MODEL,
    MISSING_MODEL_NAME,
    deployments,
    gapped_mr_series,
    good_chest,
    mpeg2_instance,
)
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from synthetic import chest_image
from waiting import wait_until

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack
from services.common import errors
from services.common.interceptor import REQUEST_ID_HEADER, ServiceInterceptor

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    cls: type[errors.PlatformError]
    # Which gateway gets the request (keys of error_cases.deployments).
    deployment: str
    instances: Callable[[], list[bytes]]
    # Public classes: a phrase of the reason the caller must read. Platform faults: a phrase of
    # the internal reason, which must reach the log and must not reach the caller.
    phrase: str
    pipeline: str = ""


def _chest(**kwargs: object) -> Callable[[], list[bytes]]:
    return lambda: [chest_image(np.full((32, 32), 100, np.uint8), **kwargs)]


CASES: dict[str, Case] = {
    "not DICOM": Case(
        errors.InvalidInput, "stack", lambda: [b"GIF89a" + bytes(500)], "not a DICOM file"
    ),
    "MPEG2 transfer syntax": Case(
        errors.UnsupportedInput, "stack", lambda: [mpeg2_instance()], "1.2.840.10008.1.2.4.100"
    ),
    "too many instances": Case(
        errors.TooLarge, "stack", lambda: [good_chest()] * 101, "the limit is 100"
    ),
    "pipeline outside the client's policy": Case(
        errors.PermissionDenied, "restricted", _chest(), "may not run pipeline 'cxr_pneumonia'"
    ),
    "client's rate limit used up": Case(
        errors.RateLimited, "rated", _chest(), "rate limit of 0.001 studies/s"
    ),
    "no API key": Case(errors.Unauthenticated, "keyed", _chest(), "this gateway needs credentials"),
    "every study slot busy, no queue": Case(
        errors.Overloaded, "full", _chest(), "the gateway is at capacity"
    ),
    "unknown pipeline": Case(
        errors.NotFound, "stack", _chest(), "unknown pipeline 'mammo_v9'", pipeline="mammo_v9"
    ),
    "brain series with a missing slice": Case(
        errors.StudyRefused,
        "stack",
        gapped_mr_series,
        "refuses this series",
    ),
    "an adult's radiograph to a pipeline that refuses outside its intended use": Case(
        errors.OutsideIntendedUse,
        "stack",
        _chest(patient_age="064Y"),
        "outside intended use: patient age outside 1-5 years",
        pipeline="cxr_pneumonia_ensemble",
    ),
    "no pipeline accepts the study": Case(
        errors.NoMatchingPipeline, "stack", _chest(body_part="KNEE"), "BodyPartExamined is 'KNEE'"
    ),
    "Triton not listening": Case(
        errors.DependencyUnavailable, "dead_triton", _chest(), "inference server"
    ),
    "model not served by Triton": Case(
        errors.DependencyUnavailable,
        "broken",
        _chest(),
        f"model {MISSING_MODEL_NAME} is not loaded",
        pipeline=MISSING_MODEL,
    ),
    "inner call deadline": Case(
        errors.DeadlineExceeded, "deadline", _chest(), "did not answer in time"
    ),
    "postprocessor address is another service": Case(
        errors.InternalError, "miswired", _chest(), "without platform details"
    ),
    "rule reads a logit column the model lacks": Case(
        errors.ContractViolation, "broken", _chest(), "reads column 5", pipeline=BAD_COLUMN
    ),
    "pipeline names an input the model lacks": Case(
        errors.Misconfiguration, "broken", _chest(), BAD_INPUT_NAME, pipeline=BAD_INPUT
    ),
}
# Deployments that can also analyze a good study; the others fail every study by design.
CAN_SERVE = {"stack", "broken"}


@pytest.fixture(scope="module")
def channels(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, grpc.Channel]]:
    """A channel to the gateway of each deployment (see error_cases.deployments)."""
    with deployments(stack, tmp_path_factory.mktemp("error_table")) as addresses:
        opened = {name: grpc.insecure_channel(a) for name, a in addresses.items()}
        try:
            yield opened
        finally:
            for channel in opened.values():
                channel.close()


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, f"no google.rpc.Status details: {err.details()}"
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    return infos[0]


def _trailing_request_id(err: grpc.RpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(REQUEST_ID_HEADER, "")


def test_every_error_class_has_a_case() -> None:
    expected = {
        cls
        for cls in errors.all_classes()
        if cls.__module__ == errors.__name__ and cls is not errors.PlatformError
    }
    assert {case.cls for case in CASES.values()} == expected


@pytest.mark.parametrize("name", CASES)
def test_error_reaches_the_caller_as_its_class(
    name: str,
    channels: dict[str, grpc.Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    case = CASES[name]
    stub = gateway_pb2_grpc.GatewayStub(channels[case.deployment])
    request = gateway_pb2.AnalyzeRequest(instances=case.instances(), pipeline=case.pipeline)
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as caught:
        stub.Analyze(request, timeout=60)
    err = caught.value
    details = err.details() or ""
    assert err.code().name == case.cls.code, details

    info = _error_info(err)
    assert info.reason == case.cls.kind, details
    assert info.domain == errors.DOMAIN == "imaging.v1"
    rid = info.metadata["request_id"]
    assert rid
    assert _trailing_request_id(err) == rid

    if case.cls.public:
        assert case.phrase in details
    else:
        assert details == (
            f"internal error ({case.cls.kind}); quote request id {rid} to the operator"
        )
        assert case.phrase not in details
        # ...but the operator finds it (these deployments run in this process).
        logged = [r.getMessage() for r in caplog.records]
        assert any(case.phrase in line for line in logged), logged

    # Serving goes on: the same deployment fails the same way again, stays healthy and
    # (where it can) analyzes a good study; so does the stack's own gateway.
    with pytest.raises(grpc.RpcError) as again:
        stub.Analyze(request, timeout=60)
    assert again.value.code().name == case.cls.code
    assert _error_info(again.value).reason == case.cls.kind
    good = gateway_pb2.AnalyzeRequest(instances=[good_chest()])
    for deployment in {case.deployment, "stack"} & CAN_SERVE:
        response = gateway_pb2_grpc.GatewayStub(channels[deployment]).Analyze(good, timeout=60)
        assert response.pipeline == "cxr_pneumonia"
        assert len(response.findings) == 1


def test_platform_fault_quotes_the_clients_request_id(channels: dict[str, grpc.Channel]) -> None:
    """A caller who names its request is told to quote that id, the one under which the inner
    service logged the reason (and the one a successful response carries)."""
    stub = gateway_pb2_grpc.GatewayStub(channels["broken"])
    request = gateway_pb2.AnalyzeRequest(
        instances=[good_chest()], pipeline=BAD_COLUMN, client_request_id="client-rid-42"
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Analyze(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert _error_info(caught.value).metadata["request_id"] == "client-rid-42"
    assert "quote request id client-rid-42" in (caught.value.details() or "")


@pytest.mark.parametrize("deployment", ["deadline", "miswired", "keyed", "restricted"])
def test_failing_deployments_stay_healthy(
    deployment: str, channels: dict[str, grpc.Channel]
) -> None:
    """The gateways that fail every study by design still answer, so the failures above were
    errors they reported, not crashes."""
    health = health_pb2_grpc.HealthStub(channels[deployment])
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_gateway_whose_triton_is_unreachable_is_not_ready(
    channels: dict[str, grpc.Channel],
) -> None:
    """It still answers (UNAVAILABLE, above), but tells the load balancer not to send it work
    (IMAGING_PEER_UNREACHABLE_SECONDS, 3 s by default; a generous bound here)."""
    health = health_pb2_grpc.HealthStub(channels["dead_triton"])
    wait_until(
        lambda: (
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        ),
        30,
        "the gateway without Triton still reports SERVING",
    )


def test_unhandled_exception_is_internal_with_request_id_only() -> None:
    """A bug (any exception outside the tree) in a servicer: INTERNAL, kind INTERNAL, the
    request id, and not the exception's text. No shipped code path raises one on purpose, so
    this drives the one interceptor every service uses with a handler that raises."""
    secret = "KeyError-like bug text 1234 that must stay in the log"

    def boom(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError(secret)

    handler = grpc.method_handlers_generic_handler(
        "probe.Probe", {"Boom": grpc.unary_unary_rpc_method_handler(boom)}
    )
    srv = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[ServiceInterceptor("probe")]
    )
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/probe.Probe/Boom")
            for _ in range(2):  # and it keeps serving
                with pytest.raises(grpc.RpcError) as caught:
                    call(b"", metadata=((REQUEST_ID_HEADER, "rid-probe-1"),), timeout=10)
                err = caught.value
                assert err.code() == grpc.StatusCode.INTERNAL
                info = _error_info(err)
                assert (info.reason, info.domain) == ("INTERNAL", "imaging.v1")
                assert info.metadata["request_id"] == "rid-probe-1"
                details = err.details() or ""
                assert "quote request id rid-probe-1" in details
                assert secret not in details and "RuntimeError" not in details
    finally:
        srv.stop(0)
