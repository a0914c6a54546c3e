"""The ingest's Prometheus series (beside the per-RPC ones every service has)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STORES = Counter(
    "imaging_ingest_stores_total",
    "C-STORE requests answered, by outcome (stored, duplicate, conflict, or why not)",
    ["outcome"],
)
STORE_SECONDS = Histogram(
    "imaging_ingest_store_seconds",
    "C-STORE handling time, file received to answer (fsyncs and the engine's ack included)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONFLICTS = Counter(
    "imaging_ingest_conflicting_copies_total",
    "Second copies of a stored SOP instance with other bytes (the first is kept)",
)
ASSOCIATIONS_REJECTED = Counter(
    "imaging_ingest_associations_rejected_total",
    "Associations refused: caller not allowed, or TLS handshake failed",
)
STUDIES_COMPLETED = Counter(
    "imaging_ingest_studies_completed_total", "Studies declared complete, by how", ["how"]
)
ANALYSES = Counter(
    "imaging_ingest_analyses_total",
    "Analysis jobs finished, by result (done, refused, retry, failed, dead_lettered, stale)",
    ["result"],
)
ANALYSIS_SECONDS = Histogram(
    "imaging_ingest_analysis_seconds",
    "One analysis job: reading the study, the gateway's answer, storing the result",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300),
)
STUDIES = Gauge("imaging_ingest_studies", "Studies held, by state", ["state"])


def declare() -> None:
    """Every labelled series at zero from the start, so rate() and alerts see them."""
    for outcome in (
        "stored",
        "duplicate",
        "conflict",
        "malformed",
        "mismatch",
        "disk_full",
        "disk_error",
        "engine_down",
        "failed",
    ):
        STORES.labels(outcome)
    for how in ("quiet", "closed"):
        STUDIES_COMPLETED.labels(how)
    for result in ("done", "refused", "retry", "failed", "dead_lettered", "stale"):
        ANALYSES.labels(result)


EXPORTS = Counter(
    "imaging_ingest_exports_total",
    "Exports finished, by destination and result (delivered, dead_lettered)",
    ["destination", "result"],
)
EXPORT_FAILURES = Counter(
    "imaging_ingest_export_failures_total",
    "Failed delivery attempts, by destination and class (transient, permanent)",
    ["destination", "failure"],
)
EXPORT_SECONDS = Histogram(
    "imaging_ingest_export_seconds",
    "One delivery attempt (association or request, and the storage commitment wait)",
    ["destination"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
EXPORT_BACKLOG = Gauge(
    "imaging_ingest_export_backlog", "Exports waiting (pending or retrying)", ["destination"]
)
EXPORT_OLDEST_SECONDS = Gauge(
    "imaging_ingest_export_oldest_seconds",
    "Age of the oldest export waiting for the destination",
    ["destination"],
)


def declare_destinations(names: list[str]) -> None:
    for name in names:
        for result in ("delivered", "dead_lettered"):
            EXPORTS.labels(name, result)
        for failure in ("transient", "permanent"):
            EXPORT_FAILURES.labels(name, failure)
        EXPORT_BACKLOG.labels(name).set(0)
        EXPORT_OLDEST_SECONDS.labels(name).set(0)
