"""Reading a client stream with an idle and a total deadline.

Without them a caller that opens AnalyzeStream and then sends nothing (or a byte a minute)
keeps its coroutine, and once admitted its study slot, for as long as it likes: eight such
streams locked every other client out of a gateway whose health said SERVING.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from services.common.errors import DeadlineExceeded

T = TypeVar("T")


class DeadlineReader(Generic[T]):
    """The messages of ``messages``; DeadlineExceeded when the next one takes longer than
    ``idle_seconds`` or the stream is not over ``total_seconds`` after the reader was made."""

    def __init__(
        self,
        messages: AsyncIterator[T],
        idle_seconds: float,
        total_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._messages, self._idle, self._total, self._clock = (
            messages,
            idle_seconds,
            total_seconds,
            clock,
        )
        self._end = clock() + total_seconds

    async def next(self) -> T | None:
        """The next message, None at the end of the stream."""
        left = self._end - self._clock()
        try:
            async with asyncio.timeout(max(0.0, min(self._idle, left))):
                message = await anext(self._messages, None)
        except TimeoutError:
            if left <= self._idle:
                raise self._too_slow() from None
            raise DeadlineExceeded(
                f"the stream sent nothing for {self._idle:g} s (IMAGING_STREAM_IDLE_SECONDS)"
            ) from None
        if message is not None and self._clock() > self._end:
            raise self._too_slow()
        return message

    def _too_slow(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the upload did not finish within {self._total:g} s "
            "(IMAGING_STREAM_RECEIVE_SECONDS); send the study faster or use Analyze"
        )

    def __aiter__(self) -> DeadlineReader[T]:
        return self

    async def __anext__(self) -> T:
        message = await self.next()
        if message is None:
            raise StopAsyncIteration
        return message
