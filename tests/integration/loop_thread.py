"""The ingest service's event loop, run in a thread as services/ingest/server.py runs it: the
SCP's handlers and the tests call into it from other threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from services.ingest.engine import bridge

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def receiver_run(self, timeout: float) -> Callable[[Coroutine[Any, Any, T]], T]:
        """What services/ingest/server.py gives the receiver as ``run``."""
        return bridge(self.loop, timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
