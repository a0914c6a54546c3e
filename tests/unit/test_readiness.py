"""The gateway's readiness decision and its probe loop (real asyncio, fake probes)."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2
from waiting import async_wait_until

from services.gateway.readiness import PeerWatch, watch


def test_a_peer_is_down_only_after_failing_for_the_whole_grace_period() -> None:
    peers = PeerWatch(unreachable_seconds=3.0)
    peers.observe("triton", False, now=10.0)
    peers.observe("decoder", True, now=10.0)
    assert peers.down(12.9) == []
    peers.observe("triton", False, now=13.0)
    assert peers.down(13.0) == ["triton"]
    peers.observe("triton", True, now=14.0)  # one good answer resets it
    assert peers.down(20.0) == []
    peers.observe("triton", False, now=20.0)
    assert peers.down(22.0) == []


def test_health_turns_not_serving_and_back_with_the_peer() -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    async def scenario() -> list[int]:
        servicer = health.aio.HealthServicer()
        await servicer.set("", serving)
        up = {"triton": False}
        probes = [0]

        async def triton() -> bool:
            probes[0] += 1
            if not up["triton"]:
                raise ConnectionError("refused")
            return True

        async def status() -> int:
            request = health_pb2.HealthCheckRequest(service="")
            return int((await servicer.Check(request, None)).status)  # type: ignore[arg-type]

        async def until(expected: int) -> int:  # polled: a loaded machine may be slow
            async def reached() -> bool:
                return await status() == expected

            await async_wait_until(reached, 5, f"health never turned {expected}")
            return expected

        task = asyncio.ensure_future(watch({"triton": triton}, servicer, [], 0.05, 0.02))
        # Two failed rounds of probes: the first set its status, the second saw it.
        await async_wait_until(lambda: probes[0] >= 2, 5, "the watch never probed triton")
        seen = [await status()]  # not ready before its dependencies answer
        up["triton"] = True
        seen.append(await until(serving))
        up["triton"] = False
        seen.append(await until(not_serving))
        up["triton"] = True
        seen.append(await until(serving))
        task.cancel()
        return seen

    assert asyncio.run(scenario()) == [not_serving, serving, not_serving, serving]
