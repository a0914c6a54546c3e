"""Closed- and open-loop load on Gateway/Analyze, shared by the overload fault test and
load_tests/faults.py: closed loops measure capacity and unloaded latency, an open loop offers
a fixed arrival rate whatever the answers (as independent callers do)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import numpy as np

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic()
    code: str
    seconds: float


@contextmanager
def background_load(
    address: str, study: Sequence[bytes], clients: int, deadline: float
) -> Iterator[list[Outcome]]:
    """``clients`` closed-loop callers (each sends its next study when the last is answered)
    while the block runs; the outcomes so far, complete once the block has ended."""
    outcomes: list[Outcome] = []
    stop = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    stub.Analyze(gateway_pb2.AnalyzeRequest(instances=study), timeout=deadline)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                outcomes.append(Outcome(sent, code, time.monotonic() - sent))

    threads = [threading.Thread(target=caller) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in threads:
            thread.join(deadline + 30)


def closed_loop(
    address: str, study: Sequence[bytes], clients: int, seconds: float, deadline: float
) -> list[Outcome]:
    """Closed-loop load for ``seconds``."""
    with background_load(address, study, clients, deadline) as outcomes:
        time.sleep(seconds)
    return outcomes


async def _open_loop(
    address: str, study: Sequence[bytes], rate: float, seconds: float, deadline: float
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await channel.channel_ready()
        request = gateway_pb2.AnalyzeRequest(instances=study)

        async def call() -> None:
            sent = time.monotonic()
            try:
                await stub.Analyze(request, timeout=deadline)
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            outcomes.append(Outcome(sent, code, time.monotonic() - sent))

        start, calls = time.monotonic(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            calls.append(asyncio.create_task(call()))
        await asyncio.gather(*calls)
    return outcomes


def open_loop(
    address: str, study: Sequence[bytes], rate: float, seconds: float, deadline: float
) -> list[Outcome]:
    """``rate`` studies per second for ``seconds``, sent on schedule whatever the answers."""
    return asyncio.run(_open_loop(address, study, rate, seconds, deadline))


def throughput(outcomes: Sequence[Outcome]) -> float:
    """Answered OK per second over the span of the run."""
    ok = [o for o in outcomes if o.code == "OK"]
    span = max(o.sent + o.seconds for o in ok) - min(o.sent for o in ok)
    return len(ok) / span


def p99(seconds: Sequence[float]) -> float:
    return float(np.percentile(seconds, 99))
