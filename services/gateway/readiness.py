"""Gateway readiness follows its dependencies: NOT_SERVING once Triton or an inner service has
been unreachable for a while, SERVING again when it answers. Without this a gateway whose
Triton is dead stays in the load balancer and answers UNAVAILABLE to everything it gets.

:class:`PeerWatch` is the decision (pure, unit-tested); :func:`watch` probes on the gateway's
event loop and sets the health status on transitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]


class PeerWatch:
    """Which peers have failed every probe for at least ``unreachable_seconds``."""

    def __init__(self, unreachable_seconds: float) -> None:
        self._grace = unreachable_seconds
        self._failing_since: dict[str, float] = {}

    def observe(self, peer: str, reachable: bool, now: float) -> None:
        if reachable:
            self._failing_since.pop(peer, None)
        else:
            self._failing_since.setdefault(peer, now)

    def down(self, now: float) -> list[str]:
        return sorted(p for p, since in self._failing_since.items() if now - since >= self._grace)


async def _reachable(probe: Probe, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(probe(), timeout)
    except Exception as err:  # any failure to answer is "unreachable"
        log.debug("probe failed: %s: %s", type(err).__name__, str(err)[:200])
        return False


async def watch(
    probes: Mapping[str, Probe],
    servicer: health.aio.HealthServicer,
    services: list[str],
    unreachable_seconds: float,
    interval: float,
) -> None:
    """Probe every peer each ``interval``; runs until cancelled. The gateway starts
    NOT_SERVING and turns SERVING after the first round in which every peer answers."""
    peers = PeerWatch(unreachable_seconds)
    serving = False
    await _set(servicer, services, health_pb2.HealthCheckResponse.NOT_SERVING)
    while True:
        results = await asyncio.gather(*(_reachable(p, interval) for p in probes.values()))
        now = time.monotonic()
        for name, reachable in zip(probes, results, strict=True):
            peers.observe(name, reachable, now)
        if not serving and all(results):
            serving = True
            await _set(servicer, services, health_pb2.HealthCheckResponse.SERVING)
            log.info("dependencies reachable: serving")
        elif serving and (down := peers.down(now)):
            serving = False
            await _set(servicer, services, health_pb2.HealthCheckResponse.NOT_SERVING)
            log.error(
                "not serving: %s unreachable for %.0f s", ", ".join(down), unreachable_seconds
            )
        await asyncio.sleep(interval)


async def _set(servicer: health.aio.HealthServicer, services: list[str], status: int) -> None:
    for service in ["", *services]:
        await servicer.set(service, status)
