"""Inner calls get the caller's remaining time (services/gateway/deadlines.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common.errors import DeadlineExceeded
from services.gateway import deadlines


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


def _in_call(remaining: float | None, configured: float, wait: float = 0.0) -> float:
    """The inner timeout ``wait`` seconds into a call, on a clock the test moves (no real
    waiting: the bounds below then hold on any machine)."""
    now = [1000.0]

    async def call() -> float:
        context: Any = _Context(remaining)
        deadlines.begin(context)
        now[0] += wait
        return deadlines.timeout(configured)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deadlines.time, "monotonic", lambda: now[0])
        return asyncio.run(call())


def test_without_a_client_deadline_the_configured_timeout_applies() -> None:
    assert _in_call(None, 60.0) == 60.0


def test_a_client_deadline_shortens_inner_timeouts() -> None:
    timeout = _in_call(2.0, 60.0, wait=0.2)
    assert timeout == pytest.approx(2.0 - 0.2 - deadlines.MARGIN_SECONDS)


def test_the_configured_timeout_still_caps_a_long_client_deadline() -> None:
    assert _in_call(3600.0, 60.0) == 60.0


def test_a_spent_deadline_is_deadline_exceeded_before_the_call_is_sent() -> None:
    with pytest.raises(DeadlineExceeded, match="caller's deadline passed"):
        _in_call(0.01, 60.0, wait=0.05)
