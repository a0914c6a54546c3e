"""Fault figures for the README reliability table: tritonserver killed (SIGKILL) under c=8.

Starts the real local stack, drives Gateway/Analyze with 8 closed-loop clients (a 64x64 chest
image, 5 s deadline), kills tritonserver, restarts it, and reports: how long until the gateway
reports NOT_SERVING, how long after Triton's restart until it is SERVING again, the slowest
answer during the outage (against the deadline), and the codes before, during and after.
tests/integration/test_faults.py asserts the same behaviour with generous bounds.

    .venv/bin/python load_tests/faults.py
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import REPO_ROOT, Ports, Stack

sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from synthetic import chest_image

DEADLINE = 5.0


def _status(stack: Stack) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.health['gateway']}") as channel:
        request = health_pb2.HealthCheckRequest()
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def _until(stack: Stack, status: int, limit: float = 60.0) -> float:
    start = time.monotonic()
    while _status(stack) != status:
        if time.monotonic() - start > limit:
            raise RuntimeError(f"health never became {status}")
        time.sleep(0.05)
    return time.monotonic() - start


def main() -> None:
    study = [chest_image(np.full((64, 64), 90, np.uint8))]
    outcomes: list[tuple[float, str, float]] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as run_dir:
        stack = Stack(Path(run_dir), ports=Ports.free())
        stack.start()

        def load() -> None:
            with grpc.insecure_channel(stack.gateway_address) as channel:
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
        try:
            for thread in threads:
                thread.start()
            time.sleep(5)
            killed = time.monotonic()
            os.killpg(stack.pids["tritonserver"], signal.SIGKILL)
            not_serving = _until(stack, health_pb2.HealthCheckResponse.NOT_SERVING)
            stack.restart_triton()
            restarted = time.monotonic()
            serving = _until(stack, health_pb2.HealthCheckResponse.SERVING)
            time.sleep(5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            stack.stop()
    recovered = restarted + serving
    phases = {
        "before": [o for o in outcomes if o[0] + o[2] < killed],
        "outage": [o for o in outcomes if killed <= o[0] < recovered],
        "after": [o for o in outcomes if o[0] >= recovered + 0.5],
    }
    print("| measure | value |\n| --- | --- |")
    print(f"| gateway NOT_SERVING after the kill | {not_serving:.1f} s |")
    print(f"| Triton restart (process start to ready) | {restarted - killed - not_serving:.1f} s |")
    print(f"| gateway SERVING after Triton is ready | {serving:.1f} s |")
    slowest = max(o[2] for o in phases["outage"])
    print(f"| slowest answer during the outage (deadline {DEADLINE:.0f} s) | {slowest:.2f} s |")
    for name, rows in phases.items():
        codes = ", ".join(f"{c} {n}" for c, n in Counter(c for _, c, _ in rows).most_common())
        print(f"| requests {name} | {codes} |")


if __name__ == "__main__":
    main()
