"""AnalyzeStream's guards, without gRPC: the idle and total deadlines of a client stream, the
per-client cap on study slots, and the audit hashing that once trusted the caller's index."""

from __future__ import annotations

import asyncio
import hashlib
import resource
from collections.abc import AsyncIterator

import pytest

from services.api.imaging.v1 import gateway_pb2
from services.common.errors import DeadlineExceeded, RateLimited
from services.gateway.auditing import CallFacts, _hashing
from services.gateway.core import Admission
from services.gateway.receiving import DeadlineReader


async def _stream(items: list[int], pause_after: int, forever: asyncio.Event) -> AsyncIterator[int]:
    for index, item in enumerate(items):
        if index == pause_after:
            await forever.wait()  # a client that stops sending
        yield item


def test_a_stream_that_goes_quiet_ends_at_the_idle_deadline() -> None:
    async def scenario() -> list[int]:
        got: list[int] = []
        reader = DeadlineReader(_stream([1, 2, 3], 2, asyncio.Event()), 0.05, 60.0)
        with pytest.raises(DeadlineExceeded, match=r"sent nothing for 0\.05 s"):
            async for item in reader:
                got.append(item)
        return got

    assert asyncio.run(scenario()) == [1, 2]


def test_a_stream_that_trickles_ends_at_the_total_deadline() -> None:
    now = [0.0]

    async def trickle() -> AsyncIterator[int]:
        for item in range(100):
            now[0] += 10.0  # each message comes 10 s after the last: under the idle time
            yield item

    async def scenario() -> list[int]:
        got: list[int] = []
        reader = DeadlineReader(trickle(), 30.0, 45.0, clock=lambda: now[0])
        with pytest.raises(DeadlineExceeded, match="did not finish within 45 s"):
            async for item in reader:
                got.append(item)
        return got

    assert asyncio.run(scenario()) == [0, 1, 2, 3]  # 40 s in; the fifth would be at 50 s


def test_a_stream_within_its_deadlines_is_read_to_the_end() -> None:
    async def scenario() -> list[int]:
        return [i async for i in DeadlineReader(_stream([1, 2, 3], 9, asyncio.Event()), 5, 5)]

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_one_client_cannot_hold_more_than_its_share_of_slots() -> None:
    async def scenario() -> list[str]:
        admission = Admission(running=4, queued=4, per_client=2)
        release = asyncio.Event()
        outcomes: list[str] = []

        async def study(client: str) -> None:
            try:
                async with admission.slot(client):
                    await release.wait()
                outcomes.append(f"{client} done")
            except RateLimited as err:
                outcomes.append(f"{client} refused: {err.reason}")

        tasks = [asyncio.ensure_future(study(c)) for c in ("a", "a", "a", "b")]
        for _ in range(10):
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)
        async with admission.slot("a"), admission.slot("a"):  # the share is given back
            pass
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[0].startswith("a refused: this client already holds 2 studies")
    assert sorted(outcomes[1:]) == ["a done", "a done", "b done"]


def _chunk(index: int, data: bytes) -> gateway_pb2.AnalyzeChunk:
    return gateway_pb2.AnalyzeChunk(
        chunk=gateway_pb2.InstanceChunk(instance_index=index, data=data)
    )


def test_the_audit_hashes_only_chunks_the_assembler_accepts() -> None:
    """A caller's index never sizes anything: 2**32 - 1 once meant 4 billion digests."""
    messages = [
        gateway_pb2.AnalyzeChunk(header=gateway_pb2.AnalyzeHeader()),
        _chunk(0, b"ab"),
        _chunk(0, b"cd"),
        _chunk(2**32 - 1, b"x"),
        _chunk(1, b"ef"),
        _chunk(5_000_000, b"y"),
    ]

    async def scenario(facts: CallFacts) -> int:
        async def source() -> AsyncIterator[gateway_pb2.AnalyzeChunk]:
            for message in messages:
                yield message

        return len([m async for m in _hashing(source(), facts)])

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    facts = CallFacts()
    assert asyncio.run(scenario(facts)) == len(messages)  # every message passed on
    assert [d.hexdigest() for d in facts.digests] == [
        hashlib.sha256(b"abcd").hexdigest(),
        hashlib.sha256(b"ef").hexdigest(),
    ]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
