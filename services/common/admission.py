"""Bounded work for the thread-pool services: ``running`` RPCs at once, ``queued`` waiting.

gRPC's sync server queues calls in its thread pool without bound, so a burst turns into
unbounded latency and memory. Here the pool has a thread for every call admitted (see
services/common/server.py) and the wait happens in this limiter, where its length is known:
a call beyond ``running + queued`` is refused at once with Overloaded (RESOURCE_EXHAUSTED and
the OVERLOADED kind, which the gateway re-raises by kind, never by message text).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from services.common.errors import Overloaded

QUEUED = Gauge("imaging_rpcs_queued", "RPCs waiting for a slot", ["service"])
RUNNING = Gauge("imaging_rpcs_running", "RPCs holding a slot", ["service"])


class Limiter:
    def __init__(self, service: str, running: int, queued: int) -> None:
        if running < 1 or queued < 0:
            raise ValueError(f"need running >= 1 and queued >= 0, not {running} and {queued}")
        self._service, self.running, self.queued = service, running, queued
        self._slots = threading.BoundedSemaphore(running)
        self._lock = threading.Lock()
        self._waiting = 0
        self._queued_gauge = QUEUED.labels(service)
        self._running_gauge = RUNNING.labels(service)

    @property
    def capacity(self) -> int:
        """Calls the limiter holds at once (running and waiting): the thread pool's size."""
        return self.running + self.queued

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                if self._waiting >= self.queued:
                    raise Overloaded(
                        f"the {self._service} is at capacity ({self.running} calls running, "
                        f"{self._waiting} waiting); retry later"
                    )
                self._waiting += 1
                self._queued_gauge.inc()
            try:
                self._slots.acquire()
            finally:
                with self._lock:
                    self._waiting -= 1
                    self._queued_gauge.dec()
        self._running_gauge.inc()
        try:
            yield
        finally:
            self._running_gauge.dec()
            self._slots.release()
