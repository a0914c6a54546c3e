"""An in-memory Kubernetes API (PyPI ``kmock``) for the official, synchronous client.

No kube-apiserver can run on the test machines, so kmock's KubernetesEmulator serves the Pod
and EndpointSlice objects over real HTTP. It is asyncio-based and the kubernetes client blocks,
so it runs in its own thread and event loop; the code under test talks to it like to a cluster.
kmock stores and lists objects but ignores labelSelector, which the code under test re-checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml

PODS = kmock.resource("v1/pods")
ENDPOINT_SLICES = kmock.resource("discovery.k8s.io/v1/endpointslices")
NAMESPACE = "imaging"
RELEASE = "demo"
SERVICE = "demo-imaging-platform-triton"

T = TypeVar("T")


class KubeApi:
    """kmock's KubernetesEmulator on a loopback port, driven from synchronous tests."""

    def __init__(self) -> None:
        self._started: concurrent.futures.Future[tuple[Any, Any, Any, Any]] = (
            concurrent.futures.Future()
        )
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self._started.set_result((emulator, server, asyncio.get_running_loop(), stop))
            await stop.wait()

    def __enter__(self) -> KubeApi:
        self._thread.start()
        self._emulator, server, self._loop, self._stop = self._started.result(timeout=10)
        self.url = str(server.url).rstrip("/")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the emulator's loop: its state is not shared across threads."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def add(self, obj: dict[str, Any]) -> None:
        resource = PODS if obj["kind"] == "Pod" else ENDPOINT_SLICES
        meta = obj["metadata"]

        def put() -> None:
            self._emulator.objects[resource, meta["namespace"], meta["name"]] = obj

        self._call(put)

    def requests(self, resource: kmock.resource) -> list[tuple[str, dict[str, str]]]:
        """(path, query) of every request the emulator received for ``resource``."""
        return self._call(
            lambda: [(str(r.url.path), dict(r.params)) for r in self._emulator[resource]]
        )

    def reply(self, criteria: str, *payloads: Any) -> None:
        """A canned reply to requests matching ``criteria`` (kmock's DSL, e.g. 'get /path').

        Chained as kmock chains ``<<``: a status code then a JSON body make one response.
        """

        def install() -> None:
            reaction = self._emulator[criteria]
            for payload in payloads:
                reaction = reaction << payload

        self._call(install)

    def write_kubeconfig(self, path: Path, namespace: str = NAMESPACE) -> Path:
        """A kubeconfig whose current context points at the emulator (plain HTTP, no auth)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config))
        return path


def triton_pod(
    name: str,
    port: int,
    ready: bool = True,
    ip: str | None = "127.0.0.1",
    release: str = RELEASE,
    component: str = "triton",
    terminating: bool = False,
    model_control: str = "explicit",
) -> dict[str, Any]:
    """A Triton pod as the chart runs it; its gRPC containerPort is the local server's port."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "labels": {
            "app.kubernetes.io/name": "imaging-platform",
            "app.kubernetes.io/instance": release,
            "app.kubernetes.io/component": component,
        },
    }
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip is not None:
        status["podIP"] = ip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "tritonserver",
                    "image": "nvcr.io/nvidia/tritonserver:24.10-py3",
                    "command": ["tritonserver"],
                    "args": ["--model-repository=/models", f"--model-control-mode={model_control}"],
                    "ports": [
                        {"name": "http", "containerPort": 8000},
                        {"name": "grpc", "containerPort": port},
                        {"name": "metrics", "containerPort": 8002},
                    ],
                }
            ]
        },
        "status": status,
    }


def endpoint_slice(name: str, endpoints: dict[str, bool], service: str = SERVICE) -> dict[str, Any]:
    """An EndpointSlice of the Triton Service: pod name -> ready."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE},
            }
            for pod, ready in endpoints.items()
        ],
        "ports": [{"name": "grpc", "port": 8001, "protocol": "TCP"}],
    }
