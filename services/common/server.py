"""Shared server wiring: interceptor, health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common import metrics, tls
from services.common.admission import Limiter
from services.common.interceptor import AsyncServiceInterceptor, ServiceInterceptor
from services.common.settings import ServiceSettings

_log = logging.getLogger("imaging.server")
# The health service name a liveness (and startup) probe asks: SERVING while the process
# answers at all, never tied to a dependency (the overall status "" follows them for
# readiness), so an outage of Triton or a peer takes pods out of rotation, never restarts them.
LIVENESS_SERVICE = "liveness"
_HEADROOM = 8


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    metrics_port: int
    service_names: Sequence[str]
    health_port: int = 0
    health_server: grpc.Server | None = None

    def stop(self, grace: float) -> None:
        """Fail health checks first so load balancers drain us, then finish in-flight RPCs."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()


class Stoppable(Protocol):
    port: int

    def stop(self, grace: float) -> None: ...


@dataclass
class AsyncRunningServer:
    """An asyncio server on its own event-loop thread, stopped from synchronous code (main()
    and the tests) like a RunningServer."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    metrics_port: int
    close: Callable[[], Awaitable[None]]
    health_port: int = 0
    health_server: grpc.aio.Server | None = None

    def stop(self, grace: float) -> None:
        async def stop() -> None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
            if self.health_server is not None:
                await self.health_server.stop(0)
            await self.close()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


def _options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Clients balancing over a headless Service only learn about new replicas when they
        # re-resolve; ending connections after a while (in-flight calls finish) makes them.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
        # The gateway's keepalive pings (also between calls) must not be answered GOAWAY.
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            int(settings.min_ping_interval_seconds * 1000),
        ),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def _bind(name: str, server: grpc.Server | grpc.aio.Server, settings: ServiceSettings) -> int:
    """The API port: TLS only when the service has a certificate (mutual with a CA)."""
    address = f"{settings.host}:{settings.port}"
    credentials = tls.server_credentials(settings.tls())
    if credentials is None:
        port = int(server.add_insecure_port(address))
    else:
        port = int(server.add_secure_port(address, credentials))
    if port == 0:
        raise RuntimeError(f"{name}: cannot bind {address}")
    return port


def _bind_health(
    name: str, server: grpc.Server | grpc.aio.Server, settings: ServiceSettings
) -> int:
    """Kubelet probes cannot speak TLS: grpc.health.v1 alone, plaintext, on its own port."""
    address = f"{settings.host}:{max(settings.health_port, 0)}"  # -1: any free port
    port = int(server.add_insecure_port(address))
    if port == 0:
        raise RuntimeError(f"{name}: cannot bind the health port {address}")
    return port


def _metrics(
    name: str, settings: ServiceSettings, names: Sequence[str], stages: Sequence[metrics.Stage]
) -> int:
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    methods = [m.name for s in names for m in pool.FindServiceByName(s).methods]
    metrics.initialise(name, methods, stages)
    metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host)
    return int(metrics_server.server_port)


def report_ports(
    settings: ServiceSettings, port: int, metrics_port: int, health_port: int, **more: int
) -> None:
    """Tell the launcher which ports were bound (IMAGING_PORTS_FILE): written to a temporary
    name and renamed, so a reader sees the whole file or none."""
    if settings.ports_file is None:
        return
    ports = {"port": port, "metrics_port": metrics_port, "health_port": health_port, **more}
    partial = settings.ports_file.with_name(f".{settings.ports_file.name}.{os.getpid()}")
    partial.write_text(json.dumps({**ports, "pid": os.getpid()}))
    os.replace(partial, settings.ports_file)


def _reflection(
    server: grpc.Server | grpc.aio.Server, names: Sequence[str], settings: ServiceSettings
) -> None:
    if settings.reflection:
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )


def start_async(
    name: str,
    settings: ServiceSettings,
    register: Callable[[grpc.aio.Server], Awaitable[Callable[[], Awaitable[None]]]],
    service_names: Sequence[str],
    stages: Sequence[metrics.Stage] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    started: Callable[[health.aio.HealthServicer], Awaitable[None]] | None = None,
) -> AsyncRunningServer:
    """Like :func:`start`, for asyncio servicers; ``register`` runs on the server's loop
    (asyncio channels belong to the loop that made them) and returns what closes them."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"{name}-loop", daemon=True)
    thread.start()

    async def build() -> AsyncRunningServer:
        server = grpc.aio.server(
            interceptors=[AsyncServiceInterceptor(name, settings.peer_identities()), *interceptors],
            options=_options(settings),
        )
        close = await register(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        _reflection(server, service_names, settings)
        port = _bind(name, server, settings)
        health_server, health_port = None, 0
        if settings.health_port:
            health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            health_port = _bind_health(name, health_server, settings)
            await health_server.start()
        metrics_port = _metrics(name, settings, service_names, stages)
        await server.start()
        for service in ["", LIVENESS_SERVICE, *service_names]:
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        if started is not None:  # e.g. the gateway's dependency watch
            await started(health_servicer)
        report_ports(settings, port, metrics_port, health_port)
        _log.info(
            "%s serving gRPC (asyncio) on %s:%d, metrics on :%d",
            name,
            settings.host,
            port,
            metrics_port,
        )
        return AsyncRunningServer(
            loop,
            thread,
            server,
            health_servicer,
            port,
            metrics_port,
            close,
            health_port,
            health_server,
        )

    try:
        return asyncio.run_coroutine_threadsafe(build(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        raise


def start(
    name: str,
    settings: ServiceSettings,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    stages: Sequence[metrics.Stage] = (),
) -> RunningServer:
    """Build and start a server for ``register``'s servicers; returns the bound ports.

    ``stages`` are the pipeline stages this service times (see metrics.stage_timer).
    """
    if settings.peer_identities() and settings.tls().ca is None:
        raise ValueError(f"{name}: IMAGING_ALLOWED_PEERS needs mutual TLS (IMAGING_TLS_CA)")
    limiter = Limiter(name, settings.workers, settings.max_queued_rpcs)
    # A thread for every call the limiter holds, so none waits unseen in the pool's queue;
    # the headroom answers health checks and refusals. gRPC itself rejects beyond that.
    threads = limiter.capacity + _HEADROOM
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name),
        interceptors=[ServiceInterceptor(name, limiter, settings.peer_identities())],
        options=_options(settings),
        maximum_concurrent_rpcs=threads,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _reflection(server, service_names, settings)
    port = _bind(name, server, settings)
    health_server, health_port = None, 0
    if settings.health_port:
        health_server = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="health"))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind_health(name, health_server, settings)
        health_server.start()
    metrics_port = _metrics(name, settings, service_names, stages)
    server.start()
    for service in ["", LIVENESS_SERVICE, *service_names]:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    report_ports(settings, port, metrics_port, health_port)
    _log.info(
        "%s serving gRPC on %s:%d, metrics on :%d",
        name,
        settings.host,
        port,
        metrics_port,
    )
    return RunningServer(
        server, health_servicer, port, metrics_port, service_names, health_port, health_server
    )


def serve_forever(running: Stoppable, grace: float) -> None:
    """Block until SIGTERM/SIGINT, then shut down gracefully."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    _log.info("shutting down (grace %.0f s)", grace)
    running.stop(grace)
