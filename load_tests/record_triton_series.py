"""Record per-pod Triton counters under stepped closed-loop load, for the autoscaling tests.

Three local tritonservers (the bundled CPU build, each on its own loopback ports, the way three
Triton pods each have their own address) serve one model. Closed-loop clients (each thread sends
a request, waits for the reply, sends the next) drive them in phases:

1. two servers loaded at 1x, 2x, then 4x the base client count, the third idle: the new pod
   that gets no traffic because the gateways' connections are still pinned to the old ones;
2. the same totals spread over all three servers: the new pod has started taking traffic.

Every ``--scrape-interval`` seconds each server's /metrics is read and the raw counters the
prometheus-adapter rules use are summed over the server's models and versions, as
``sum by (pod)`` does: nv_inference_request_duration_us, nv_inference_queue_duration_us,
nv_inference_request_success (counters) and nv_inference_pending_request_count (gauge). The
series go to tests/helm/data/triton_series.json, which tests/helm/test_autoscaling_signal.py
turns into the HPA's view (PromQL rate() over the recorded samples) without a server.

The CPU twin is not a GPU: absolute rates and latencies differ, and the two loaded servers
share this machine's cores with each other and with the clients. What carries over is the
shape: how each per-pod signal responds to more load and to a pod that gets none.

    .venv/bin/python load_tests/record_triton_series.py [--phase-seconds 90] [--base-clients 6]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli.stack import free_port
from services.triton_local.launch import start_tritonserver

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "helm" / "data" / "triton_series.json"
PODS = ("triton-0", "triton-1", "triton-2")
COUNTERS = (
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
)
GAUGES = ("nv_inference_pending_request_count",)
LEVELS = (1, 2, 4)
# `name{labels} value` (Triton writes no timestamps); comments and other metrics are skipped.
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)$")


class RecordingError(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    http: int
    grpc: int
    metrics: int
    log: Path = Path()
    process: subprocess.Popen[bytes] | None = None

    def check_alive(self) -> None:
        """Fail with the end of its log if the server (or its model) died meanwhile."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RecordingError(f"{self.name} exited ({self.process.returncode}):\n{tail}")

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status != 200:
                    return False
            with socket.create_connection(("127.0.0.1", self.grpc), timeout=1):
                return True
        except OSError:
            return False

    def scrape(self) -> dict[str, float]:
        """The recorded metrics of this server, summed over their label sets."""
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=2) as reply:
            text = reply.read().decode()
        totals = dict.fromkeys((*COUNTERS, *GAUGES), 0.0)
        for line in text.splitlines():
            match = SAMPLE.match(line)
            if match and match["name"] in totals:
                totals[match["name"]] += float(match["value"])
        return totals


@dataclass
class Phase:
    name: str
    clients: dict[str, int]
    start: float = 0.0
    end: float = 0.0
    completed: int = 0
    errors: int = 0


@dataclass
class Recording:
    t0: float
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, pod: str, at: float, values: dict[str, float]) -> None:
        series = self.samples.setdefault(pod, {"t": [], **{k: [] for k in values}})
        series["t"].append(round(at - self.t0, 3))
        for key, value in values.items():
            series[key].append(value)


def phases(base: int) -> list[Phase]:
    """1x/2x/4x on two servers with the third idle, then the same totals on all three."""
    out = []
    for level in LEVELS:
        total = base * level
        out.append(
            Phase(f"2 loaded + 1 idle, {level}x", {PODS[0]: total // 2, PODS[1]: total // 2})
        )
    for level in LEVELS:
        total = base * level
        out.append(Phase(f"3 loaded, {level}x", {pod: total // 3 for pod in PODS}))
    return out


def start_servers(run_dir: Path, model: str) -> list[Server]:
    servers = []
    for name in PODS:
        server = Server(name, free_port(), free_port(), free_port(), run_dir / f"{name}.log")
        flags = [
            "--http-address=127.0.0.1",
            f"--http-port={server.http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={server.grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={server.metrics}",
            "--model-control-mode=explicit",
            f"--load-model={model}",
            "--exit-on-error=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
        ]
        server.process, _ = start_tritonserver(
            run_dir / name, REPO_ROOT / "model_repository", flags, server.log
        )
        servers.append(server)
    return servers


def wait_ready(servers: Sequence[Server], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for server in list(pending):
            server.check_alive()
            if server.ready():
                pending.remove(server)
        if pending and time.monotonic() > deadline:
            raise RecordingError(f"not ready after {timeout:.0f} s: {[s.name for s in pending]}")
        if pending:
            time.sleep(0.5)


def stop_servers(servers: Sequence[Server]) -> None:
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        if server.process is not None:
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)


def scrape_loop(
    servers: Sequence[Server], recording: Recording, interval: float, stop: threading.Event
) -> None:
    next_at = time.time()
    while not stop.is_set():
        for server in servers:
            at = time.time()
            try:
                values = server.scrape()
            except OSError:
                continue  # a missed scrape, as Prometheus would have
            recording.add(server.name, at, values)
        next_at += interval
        stop.wait(max(0.0, next_at - time.time()))


def run_phase(
    phase: Phase, servers: dict[str, Server], model: str, seconds: float, recording: Recording
) -> None:
    """Closed-loop clients in worker processes (one per loaded server), started together."""
    start = time.time() + 3.0  # the workers import tritonclient meanwhile
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "worker",
                *("--address", servers[pod].grpc_address),
                *("--model", model),
                *("--clients", str(clients)),
                *("--start-at", repr(start)),
                *("--seconds", str(seconds)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for pod, clients in phase.clients.items()
    ]
    for worker in workers:
        out, _ = worker.communicate(timeout=seconds + 120)
        if worker.returncode != 0:
            raise RecordingError(f"load worker of {phase.name} failed ({worker.returncode})")
        result = json.loads(out)
        phase.completed += result["completed"]
        phase.errors += result["errors"]
    for server in servers.values():
        server.check_alive()
    if phase.errors:
        # E.g. the CPU twin's python-backend stub crashed and Triton restarted it: the series
        # of that pod no longer show the load the phase applied. Record again.
        logs = "\n".join(s.log.read_text(errors="replace")[-1500:] for s in servers.values())
        raise RecordingError(f"{phase.errors} failed calls in {phase.name}:\n{logs}")
    phase.start = round(start - recording.t0, 3)
    phase.end = round(start + seconds - recording.t0, 3)
    rate = phase.completed / seconds
    print(f"{phase.name}: {rate:.0f} inferences/s, {phase.errors} errors", file=sys.stderr)


def worker(address: str, model: str, clients: int, start_at: float, seconds: float) -> None:
    """``clients`` closed-loop threads against one server; prints completed and failed calls.

    Each thread has a connection of its own (as each gateway pod has) and resends one prebuilt
    ModelInferRequest, so the clients spend as little CPU as possible beside the servers."""
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    counts = {"completed": 0, "errors": 0}
    lock = threading.Lock()
    stop_at = start_at + seconds

    def loop(seed: int) -> None:
        image = np.random.default_rng(seed).random((1, 1, 28, 28), dtype=np.float32)
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add(name="image", datatype="FP32")
        tensor.shape.extend(image.shape)
        request.outputs.add(name="logits")
        request.raw_input_contents.append(image.tobytes())
        # A subchannel pool of its own: one TCP connection per client thread.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(address, options=options) as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            time.sleep(max(0.0, start_at - time.time()))
            done = failed = 0
            while time.time() < stop_at:
                try:
                    infer(request, timeout=30)
                    done += 1
                except grpc.RpcError:
                    failed += 1
                    time.sleep(0.05)
        with lock:
            counts["completed"] += done
            counts["errors"] += failed

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(counts))


def record(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="triton-series-") as tmp:
        servers = start_servers(Path(tmp), args.model)
        try:
            wait_ready(servers, timeout=300)
            by_name = {s.name: s for s in servers}
            recording = Recording(t0=time.time())
            stop = threading.Event()
            scraper = threading.Thread(
                target=scrape_loop, args=(servers, recording, args.scrape_interval, stop)
            )
            scraper.start()
            try:
                time.sleep(args.idle_seconds)  # all idle: the baseline
                plan = phases(args.base_clients)
                for phase in plan:
                    run_phase(phase, by_name, args.model, args.phase_seconds, recording)
                time.sleep(args.idle_seconds)  # idle again: the counters stop growing
            finally:
                stop.set()
                scraper.join()
        finally:
            stop_servers(servers)
    return {
        "description": (
            "Per-pod Triton counters (summed over models/versions as `sum by (pod)`) scraped "
            f"every {args.scrape_interval:g} s from three local CPU tritonservers under stepped "
            "closed-loop load; written by load_tests/record_triton_series.py, read by "
            "tests/helm/test_autoscaling_signal.py. t: seconds since the recording started."
        ),
        "recorded": datetime.now(UTC).strftime("%Y-%m-%d"),
        "server": "bundled CPU tritonserver (nvidia-pytriton, python backend + onnxruntime)",
        "cpus": os.cpu_count(),
        "model": args.model,
        "scrape_interval_seconds": args.scrape_interval,
        "phase_seconds": args.phase_seconds,
        "base_clients": args.base_clients,
        "pods": list(PODS),
        "phases": [
            {
                "name": p.name,
                "start": p.start,
                "end": p.end,
                "clients": {pod: p.clients.get(pod, 0) for pod in PODS},
                "completed": p.completed,
                "errors": p.errors,
            }
            for p in plan
        ],
        "samples": recording.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("worker", help="internal: one server's closed-loop clients")
    load.add_argument("--address", required=True)
    load.add_argument("--model", required=True)
    load.add_argument("--clients", type=int, required=True)
    load.add_argument("--start-at", type=float, required=True)
    load.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--model", default="cxr_pneumonia")
    parser.add_argument("--phase-seconds", type=float, default=90.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--base-clients", type=int, default=6, help="clients at 1x (a multiple of 6)"
    )
    parser.add_argument("--scrape-interval", type=float, default=2.0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if args.command == "worker":
        worker(args.address, args.model, args.clients, args.start_at, args.seconds)
        return
    if args.base_clients % 6:
        parser.error("--base-clients must be a multiple of 6 (split over 2 and over 3 servers)")
    data = record(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
