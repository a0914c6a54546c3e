"""Fault figures for the README reliability table, on the real local stack.

1. tritonserver killed (SIGKILL) under c=8: 8 closed-loop clients (a 64x64 chest image, 5 s
   deadline); how long until the gateway reports NOT_SERVING, how long after Triton's restart
   until it is SERVING again, the slowest answer during the outage (against the deadline), and
   the codes before, during and after.
2. Offered load at 4x capacity: a gateway admitting one study at a time with no queue, a
   2048x2048 chest image; the p99 of unloaded studies (c=1), then an open loop at four times
   the rate c=1 sustains: how many are refused, how fast, and the p99 of those accepted.
tests/integration/test_faults.py asserts the same behaviour with generous bounds.

    .venv/bin/python load_tests/faults.py
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.stack import REPO_ROOT, Ports, Stack

sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from offered_load import background_load, closed_loop, open_loop, p99, throughput
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


def triton_killed() -> None:
    study = [chest_image(np.full((64, 64), 90, np.uint8))]
    with tempfile.TemporaryDirectory() as run_dir:
        stack = Stack(Path(run_dir), ports=Ports.free())
        stack.start()
        try:
            with background_load(stack.gateway_address, study, 8, DEADLINE) as outcomes:
                time.sleep(5)
                killed = time.monotonic()
                os.killpg(stack.pids["tritonserver"], signal.SIGKILL)
                not_serving = _until(stack, health_pb2.HealthCheckResponse.NOT_SERVING)
                stack.restart_triton()
                restarted = time.monotonic()
                serving = _until(stack, health_pb2.HealthCheckResponse.SERVING)
                time.sleep(5)
        finally:
            stack.stop()
    recovered = restarted + serving
    phases = {
        "before": [o for o in outcomes if o.sent + o.seconds < killed],
        "outage": [o for o in outcomes if killed <= o.sent < recovered],
        "after": [o for o in outcomes if o.sent >= recovered + 0.5],
    }
    print(f"| gateway NOT_SERVING after the kill | {not_serving:.1f} s |")
    print(f"| Triton restart (process start to ready) | {restarted - killed - not_serving:.1f} s |")
    print(f"| gateway SERVING after Triton is ready | {serving:.1f} s |")
    slowest = max(o.seconds for o in phases["outage"])
    print(f"| slowest answer during the outage (deadline {DEADLINE:.0f} s) | {slowest:.2f} s |")
    for name, rows in phases.items():
        codes = ", ".join(f"{c} {n}" for c, n in Counter(o.code for o in rows).most_common())
        print(f"| requests {name} | {codes} |")


def overload(seconds: float = 10.0) -> None:
    rng = np.random.default_rng(7)
    study = [chest_image(rng.integers(0, 255, (2048, 2048), dtype=np.uint8))]
    admit_one = {"IMAGING_MAX_CONCURRENT_STUDIES": "1", "IMAGING_MAX_QUEUED_STUDIES": "0"}
    with tempfile.TemporaryDirectory() as run_dir:
        stack = Stack(Path(run_dir), ports=Ports.free(), extra_env=admit_one)
        stack.start()
        try:
            closed_loop(stack.gateway_address, study, 1, 2.0, DEADLINE)  # warm-up
            unloaded = closed_loop(stack.gateway_address, study, 1, seconds, DEADLINE)
            capacity = throughput(unloaded)
            offered = open_loop(stack.gateway_address, study, 4 * capacity, seconds, DEADLINE)
        finally:
            stack.stop()
    accepted = [o.seconds for o in offered if o.code == "OK"]
    refused = [o.seconds for o in offered if o.code == "RESOURCE_EXHAUSTED"]
    baseline = p99([o.seconds for o in unloaded])
    print(f"| capacity (c=1, 2048x2048 chest) | {capacity:.1f} studies/s |")
    print(f"| p99 unloaded | {baseline * 1e3:.0f} ms |")
    print(f"| offered at 4x capacity | {len(offered) / seconds:.0f} studies/s |")
    print(
        f"| accepted / refused (RESOURCE_EXHAUSTED) / other | {len(accepted)} / {len(refused)} "
        f"/ {len(offered) - len(accepted) - len(refused)} |"
    )
    print(f"| p99 of refusals | {p99(refused) * 1e3:.0f} ms |")
    print(
        f"| p99 of accepted studies | {p99(accepted) * 1e3:.0f} ms "
        f"({p99(accepted) / baseline:.2f}x unloaded; goal <= 2x) |"
    )


def main() -> None:
    print("| measure | value |\n| --- | --- |")
    triton_killed()
    overload()


if __name__ == "__main__":
    main()
