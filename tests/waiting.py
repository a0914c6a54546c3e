"""The one place tests wait: poll observable state with a deadline, never sleep and assert.

A fixed sleep defines "before" and "after" by wall-clock time, which is wrong on a machine
faster or slower than the one it was tuned on. ``wait_until`` instead polls what the test
is about (a log line, a health status, a count of answers) and fails with a message naming
it once the deadline passes. ``pause`` and ``async_pause`` are for time that is itself the
subject (a fake's simulated work, an outage that lasts N seconds, a measured window): each
says why. tests/unit/test_no_sleeps.py allows ``time.sleep`` and ``asyncio.sleep`` in this
module alone (and in offered_load.py, which paces load), and refuses a pause followed
directly by an assert.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.05


def wait_until(
    predicate: Callable[[], T], timeout: float, message: str, interval: float = POLL_SECONDS
) -> T:
    """``predicate()``'s first truthy value, polled until ``timeout`` seconds passed; then
    AssertionError(``message``). The predicate is tried once more at the deadline, so a slow
    poll never fails a condition that did come true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {timeout:g} s: {message}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def eventually(predicate: Callable[[], object], timeout: float) -> bool:
    """Whether ``predicate()`` comes true within ``timeout`` seconds (for a test that asserts
    on the outcome itself, e.g. that a process did exit)."""
    try:
        wait_until(predicate, timeout, "")
    except AssertionError:
        return False
    return True


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float,
    message: str,
    interval: float = POLL_SECONDS,
) -> T:
    """:func:`wait_until` on an event loop (the predicate may be a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {timeout:g} s: {message}")
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def pause(seconds: float, why: str) -> None:
    """Let ``seconds`` pass on purpose: the duration is what is being tested or simulated
    (``why`` says which), never a guess at how long something else takes."""
    assert why, "say why this time must pass"
    time.sleep(seconds)


async def async_pause(seconds: float, why: str) -> None:
    """:func:`pause` on an event loop."""
    assert why, "say why this time must pass"
    await asyncio.sleep(seconds)
