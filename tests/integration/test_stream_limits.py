"""AnalyzeStream against a real gateway with API keys, a client policy and an audit trail:
what one caller's stream may cost the gateway before it is refused.

The gateway runs in this process beside the session stack (its peers and Triton), so its
memory is this process's: a stream that once padded a list to the caller's instance index
(2**32 - 1) killed it, and eight idle streams from a client with no rights took every slot.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import gateway_beside
from error_cases import good_chest

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack
from services.gateway import server as gateway_server

pytestmark = pytest.mark.integration

KEYS = {"reading-room": "key-of-the-reading-room", "stranger": "key-with-no-policy-entry"}
IDLE_SECONDS = 2.0
MiB = 2**20


@pytest.fixture(scope="module")
def guarded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway whose policy knows only the reading room; its address and audit trail."""
    workdir = tmp_path_factory.mktemp("guarded")
    keys = workdir / "api-keys"
    keys.write_text(
        "".join(f"{name} {hashlib.sha256(k.encode()).hexdigest()}\n" for name, k in KEYS.items())
    )
    policy = workdir / "policy.yaml"
    policy.write_text("reading-room: {}\n")
    (workdir / "audit-key").write_text("k" * 64)
    settings = gateway_beside(
        stack,
        api_keys_file=keys,
        client_policy_file=policy,
        audit_log=workdir / "audit.jsonl",
        audit_key_file=workdir / "audit-key",
        stream_idle_seconds=IDLE_SECONDS,
        max_message_bytes=8 * MiB,
    )
    running = gateway_server.start(settings)
    yield f"127.0.0.1:{running.port}", workdir / "audit.jsonl"
    running.stop(0)


def _metadata(client: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[client]}"),)


def _header() -> gateway_pb2.AnalyzeChunk:
    return gateway_pb2.AnalyzeChunk(header=gateway_pb2.AnalyzeHeader())


def _chunk(index: int, data: bytes) -> gateway_pb2.AnalyzeChunk:
    return gateway_pb2.AnalyzeChunk(
        chunk=gateway_pb2.InstanceChunk(instance_index=index, data=data)
    )


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_chunk_for_instance_2_pow_32_minus_1_is_refused_at_once_and_costs_nothing(
    guarded: tuple[str, Path],
) -> None:
    address, audit = guarded
    before = _rss_bytes()
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.AnalyzeStream(
                iter([_header(), _chunk(2**32 - 1, b"x")]),
                metadata=_metadata("reading-room"),
                timeout=30,
            )
        elapsed = time.monotonic() - start
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of order" in (caught.value.details() or "")
    assert elapsed < 1.0
    assert _rss_bytes() - before < 50 * MiB
    last = audit.read_text().splitlines()[-1]
    assert len(last.encode()) < 1024
    assert json.loads(last)["status"] == "INVALID_ARGUMENT"


def test_idle_streams_of_a_client_without_rights_are_refused_at_the_header(
    guarded: tuple[str, Path],
) -> None:
    """Eight streams that send a header and then nothing are refused at once, holding no
    slot; a legitimate study meanwhile is served."""
    address, _ = guarded
    release = threading.Event()

    def idle() -> Iterator[gateway_pb2.AnalyzeChunk]:
        yield _header()
        release.wait(60)

    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        streams = [
            stub.AnalyzeStream.future(idle(), metadata=_metadata("stranger"), timeout=60)
            for _ in range(8)
        ]
        try:
            for stream in streams:
                with pytest.raises(grpc.RpcError) as caught:
                    stream.result(timeout=10)  # answered while the client still sends nothing
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            reply = stub.Analyze(
                gateway_pb2.AnalyzeRequest(instances=[good_chest()]),
                metadata=_metadata("reading-room"),
                timeout=30,
            )
        finally:
            release.set()
    assert reply.pipeline == "cxr_pneumonia" and len(reply.findings) == 1


def test_idle_streams_of_an_allowed_client_end_at_the_idle_deadline(
    guarded: tuple[str, Path],
) -> None:
    address, _ = guarded
    release = threading.Event()

    def stalls() -> Iterator[gateway_pb2.AnalyzeChunk]:
        yield _header()
        yield _chunk(0, good_chest()[:100])
        release.wait(60)

    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        start = time.monotonic()
        streams = [
            stub.AnalyzeStream.future(stalls(), metadata=_metadata("reading-room"), timeout=60)
            for _ in range(8)
        ]
        try:
            codes, details = [], []
            for stream in streams:
                with pytest.raises(grpc.RpcError) as caught:
                    stream.result(timeout=30)
                codes.append(caught.value.code())
                details.append(caught.value.details() or "")
            elapsed = time.monotonic() - start
            # The slots are free again: a study goes through.
            reply = stub.Analyze(
                gateway_pb2.AnalyzeRequest(instances=[good_chest()]),
                metadata=_metadata("reading-room"),
                timeout=30,
            )
        finally:
            release.set()
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 8
    assert all("sent nothing for 2 s" in d for d in details), details
    assert IDLE_SECONDS <= elapsed < IDLE_SECONDS + 10
    assert reply.pipeline == "cxr_pneumonia"


def test_a_large_stream_of_a_client_without_rights_is_refused_before_its_second_chunk(
    guarded: tuple[str, Path],
) -> None:
    """300 MiB offered: the refusal comes before the client offers its second 1 MiB chunk
    (the generator waits for the call to end before going on)."""
    address, _ = guarded
    finished = threading.Event()
    offered = [0]

    def upload() -> Iterator[gateway_pb2.AnalyzeChunk]:
        yield _header()
        for _ in range(300):
            if offered[0] == 1 and finished.wait(10):
                return  # refused after one chunk at most; otherwise go on (and fail below)
            offered[0] += 1
            yield _chunk(0, bytes(MiB))

    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.AnalyzeStream.future(upload(), metadata=_metadata("stranger"), timeout=120)
        call.add_done_callback(lambda _: finished.set())
        with pytest.raises(grpc.RpcError) as caught:
            call.result(timeout=120)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert offered[0] <= 1
