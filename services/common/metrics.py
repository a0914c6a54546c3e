"""Prometheus metrics shared by all services (one registry per process)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum

import grpc
from prometheus_client import Counter, Histogram


class Stage(StrEnum):
    """The pipeline stages a timer or a metric may name: the ``stage`` label's only values, the
    keys of a response's timings, and the dashboards' and alerts' vocabulary."""

    DECODE = "decode"
    PREPROCESS = "preprocess"
    INFER = "infer"
    POSTPROCESS = "postprocess"
    REPORT = "report"
    TOTAL = "total"


# Buckets from 1 ms to 60 s: image decoding and CPU inference live in this range.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RPC_LATENCY = Histogram(
    "imaging_rpc_duration_seconds",
    "Server-side latency of each RPC.",
    ["service", "method"],
    buckets=_BUCKETS,
)
RPC_TOTAL = Counter(
    "imaging_rpc_total", "RPCs handled, by gRPC status code.", ["service", "method", "code"]
)
STAGE_LATENCY = Histogram(
    "imaging_stage_duration_seconds",
    "Latency of each pipeline stage (decode, preprocess, infer, postprocess...).",
    ["service", "stage"],
    buckets=_BUCKETS,
)


def initialise(service: str, methods: Iterable[str], stages: Iterable[Stage]) -> None:
    """Create every known series at zero, so rate() and increase() see the first requests.

    A labelled series appears only on first use; a counter whose first scraped value is
    already 10 looks flat to Prometheus and the first burst of traffic would be invisible.
    """
    for method in methods:
        RPC_LATENCY.labels(service, method)
        for code in grpc.StatusCode:
            RPC_TOTAL.labels(service, method, code.name)
    for stage in stages:
        STAGE_LATENCY.labels(service, stage)


@contextmanager
def stage_timer(service: str, stage: Stage, into: dict[str, float] | None = None) -> Iterator[None]:
    """Observe a stage's wall time; optionally also record it (in seconds) into ``into``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        STAGE_LATENCY.labels(service, stage).observe(elapsed)
        if into is not None:
            into[stage] = into.get(stage, 0.0) + elapsed
