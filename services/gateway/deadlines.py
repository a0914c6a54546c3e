"""The caller's deadline, handed down: every inner call and Triton get the time the client has
left (less a margin for the answer's way back), never a fixed timeout past it."""

from __future__ import annotations

import time
from contextvars import ContextVar

import grpc

from services.common.errors import DeadlineExceeded

# Time kept for the answer to travel back once the inner calls are done.
MARGIN_SECONDS = 0.05

_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


def begin(context: grpc.aio.ServicerContext) -> None:
    """Note when the call being served must be answered (no deadline: none is set)."""
    remaining = context.time_remaining()
    _deadline.set(None if remaining is None else time.monotonic() + remaining)


def timeout(configured: float) -> float:
    """The timeout of the next inner call: the configured one, or less if the caller's
    deadline comes first; DeadlineExceeded once it is (nearly) over."""
    deadline = _deadline.get()
    if deadline is None:
        return configured
    left = deadline - time.monotonic() - MARGIN_SECONDS
    if left <= 0:
        raise DeadlineExceeded("the caller's deadline passed before the analysis finished")
    return min(configured, left)
