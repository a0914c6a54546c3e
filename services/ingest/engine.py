"""NATS JetStream as the ingest's queue and state engine.

- ``imaging-studies`` (key-value bucket): one :class:`StudyRecord` per study, changed only by
  compare-and-set (``update(last=revision)``), so receivers and workers on several replicas
  never overwrite each other's transitions.
- ``IMAGING_JOBS`` (work-queue stream, subject ``imaging.jobs.analyze``): one message per study
  generation to analyse, de-duplicated by ``Nats-Msg-Id`` (study/generation) over the
  duplicate window, consumed at least once by the durable pull consumer ``workers``.
- ``IMAGING_DEAD`` (stream, ``imaging.dead.>``): jobs that failed for good, with the reason.

Every write waits for JetStream's acknowledgement, which the server sends only after its own
fsync when it runs with ``jetstream { sync_interval: always }`` (by default it syncs every two
minutes, and an acknowledged message can be lost in a power cut). :func:`require_sync_always`
refuses to start against a server that does not report that setting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from services.ingest.core import ExportRecord, StudyRecord

log = logging.getLogger("imaging.ingest.engine")

STUDIES_BUCKET = "imaging-studies"
JOBS_STREAM = "IMAGING_JOBS"
JOBS_SUBJECT = "imaging.jobs.analyze"
DEAD_STREAM = "IMAGING_DEAD"
DEAD_SUBJECT = "imaging.dead.analyze"
WORKERS = "workers"
EXPORTS_BUCKET = "imaging-exports"
EXPORTS_STREAM = "IMAGING_EXPORTS"
# imaging.exports.<destination>.<rank>: one work-queue subject per destination and triage rank
# (0 STAT, 1 URGENT, 2 ROUTINE), each with its own consumer, so a destination's exporter takes
# the most urgent waiting result first and one destination's backlog never holds another's.
EXPORT_RANKS = (0, 1, 2)
# Re-sent jobs (a crash between queueing and recording it) are dropped within this window.
DUPLICATE_WINDOW_SECONDS = 24 * 3600.0
_CAS_ATTEMPTS = 50


class EngineUnavailable(RuntimeError):
    """The queue engine did not acknowledge in time (down, partitioned, or overloaded)."""


T = TypeVar("T")


def bridge(
    loop: asyncio.AbstractEventLoop, timeout: float
) -> Callable[[Coroutine[Any, Any, T]], T]:
    """How the SCP's handler threads run the engine's coroutines on the service's loop: an
    answer later than ``timeout`` is EngineUnavailable (0xA700), and the call is cancelled."""

    def run(coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError as err:
            future.cancel()
            raise EngineUnavailable("no acknowledgement in time") from err

    return run


class SyncNotAlways(RuntimeError):
    pass


@dataclass(frozen=True)
class Job:
    study_uid: str
    generation: int

    def encode(self) -> bytes:
        return json.dumps({"study_uid": self.study_uid, "generation": self.generation}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Job:
        raw = json.loads(data)
        return cls(str(raw["study_uid"]), int(raw["generation"]))

    @property
    def msg_id(self) -> str:
        return f"{self.study_uid}/{self.generation}"


async def require_sync_always(monitoring_url: str, timeout: float) -> None:
    """The server must fsync before it acknowledges (``sync_interval: always``), as its
    monitoring endpoint's ``/varz`` reports (``jetstream.config.sync_always``)."""

    def read() -> dict[str, Any]:
        with urllib.request.urlopen(f"{monitoring_url.rstrip('/')}/varz", timeout=timeout) as r:
            return dict(json.loads(r.read()))

    try:
        varz = await asyncio.to_thread(read)
    except (OSError, ValueError) as err:
        raise SyncNotAlways(f"cannot read the NATS server's /varz: {err}") from err
    config = (varz.get("jetstream") or {}).get("config") or {}
    if config.get("sync_always") is not True:
        raise SyncNotAlways(
            "the NATS server does not fsync before acknowledging: run it with "
            "`jetstream { sync_interval: always }` (acknowledged studies could be lost)"
        )


class Engine:
    """The connection, the bucket and the streams, made (idempotently) at start-up."""

    def __init__(self, nc: Client, timeout: float, job_timeout: float) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.timeout = timeout
        self._job_timeout = job_timeout
        self._kv: KeyValue | None = None
        self._exports: KeyValue | None = None

    @classmethod
    async def connect(
        cls, url: str, monitoring_url: str, timeout: float, job_timeout: float
    ) -> Engine:
        nc = await nats.connect(
            url,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            name="imaging-ingest",
            # nats-py logs every failed reconnect attempt at ERROR by default: one line per
            # change of state is what an operator needs (readiness says the rest).
            error_cb=_quiet_error,
            disconnected_cb=_disconnected,
            reconnected_cb=_reconnected,
        )
        engine = cls(nc, timeout, job_timeout)
        try:
            await require_sync_always(monitoring_url, timeout)
            await engine._declare()
        except BaseException:
            await nc.close()
            raise
        return engine

    async def _declare(self) -> None:
        self._kv = await self.js.create_key_value(
            config=api.KeyValueConfig(
                bucket=STUDIES_BUCKET, history=1, storage=api.StorageType.FILE
            )
        )
        await self._stream(
            api.StreamConfig(
                name=JOBS_STREAM,
                subjects=[JOBS_SUBJECT],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
            )
        )
        self._exports = await self.js.create_key_value(
            config=api.KeyValueConfig(
                bucket=EXPORTS_BUCKET, history=1, storage=api.StorageType.FILE
            )
        )
        await self._stream(
            api.StreamConfig(
                name=EXPORTS_STREAM,
                subjects=["imaging.exports.>"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
            )
        )
        await self._stream(
            api.StreamConfig(
                name=DEAD_STREAM,
                subjects=["imaging.dead.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
            )
        )

    async def _stream(self, config: api.StreamConfig) -> None:
        try:
            await self.js.stream_info(str(config.name))
            await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(config)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None
        return self._kv

    async def close(self) -> None:
        await self.nc.close()

    # -- studies ---------------------------------------------------------------------------

    async def study(self, study_uid: str) -> tuple[StudyRecord | None, int]:
        """The record and its revision (0: none)."""
        try:
            entry = await self.kv.get(study_uid)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, 0
        return StudyRecord.model_validate_json(entry.value), int(entry.revision or 0)

    async def change(
        self, study_uid: str, change: Callable[[StudyRecord | None], StudyRecord | None]
    ) -> StudyRecord | None:
        """Apply ``change`` to the current record by compare-and-set, again on a conflict;
        ``change`` returning None (or the same record) writes nothing."""
        for _ in range(_CAS_ATTEMPTS):
            current, revision = await self.study(study_uid)
            updated = change(current)
            if updated is None or updated == current:
                return current
            data = updated.model_dump_json().encode()
            try:
                if revision == 0:
                    await self.kv.create(study_uid, data)
                else:
                    await self.kv.update(study_uid, data, last=revision)
                return updated
            except KeyWrongLastSequenceError:
                continue
            except NatsError as err:
                if "wrong last sequence" in str(err):
                    continue
                raise
        raise EngineUnavailable(f"study record kept changing under {_CAS_ATTEMPTS} updates")

    async def studies(self) -> list[StudyRecord]:
        return [StudyRecord.model_validate_json(value) for _, value in await entries(self.kv)]

    async def forget(self, study_uid: str) -> None:
        try:
            await self.kv.purge(study_uid)
        except KeyNotFoundError:
            return

    # -- jobs ------------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> None:
        await self.js.publish(JOBS_SUBJECT, job.encode(), headers={"Nats-Msg-Id": job.msg_id})

    async def jobs(self) -> Any:
        """The workers' durable pull subscription (redelivered after ``job_timeout``)."""
        return await self.js.pull_subscribe(
            JOBS_SUBJECT,
            durable=WORKERS,
            stream=JOBS_STREAM,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self._job_timeout,
                max_deliver=-1,
            ),
        )

    async def dead_letter(self, job: Job, reason: str, attempts: int) -> None:
        body = {"study_uid": job.study_uid, "generation": job.generation, "reason": reason}
        await self.js.publish(
            DEAD_SUBJECT,
            json.dumps({**body, "attempts": attempts}).encode(),
            headers={"Nats-Msg-Id": f"dead/{job.msg_id}"},
        )


async def _quiet_error(err: Exception) -> None:
    log.debug("NATS client error: %s", type(err).__name__)


async def _disconnected() -> None:
    log.warning("disconnected from the NATS server: C-STORE answers 0xA700 until it is back")


async def _reconnected() -> None:
    log.info("reconnected to the NATS server")


# A listing's watch consumer is gone this long after the listing ends. nats-py's own keys()
# leaves its consumer for the server's default of five minutes, and a stream holds at most a
# thousand: a completion pass every second would fill that within hours.
_LISTING_INACTIVE_SECONDS = 2.0


async def entries(kv: KeyValue) -> list[tuple[str, bytes]]:
    """Every live key and its value, in one pass over the bucket (one watch consumer, which the
    server drops two seconds after this returns)."""
    watcher = await kv.watchall(ignore_deletes=True, inactive_threshold=_LISTING_INACTIVE_SECONDS)
    found: list[tuple[str, bytes]] = []
    try:
        async for entry in watcher:
            if entry is None:  # the initial values are all delivered
                break
            if entry.value:
                found.append((entry.key, entry.value))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return found


class Outbox:
    """Exports on the engine: a record per (destination, result) in ``imaging-exports`` for
    `exports list/show`, and a message per delivery to make on the destination's subject."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def records(self) -> KeyValue:
        assert self._engine._exports is not None
        return self._engine._exports

    async def put(self, record: ExportRecord, msg_id: str) -> None:
        """Record it, then queue it (a crash between the two is repaired by the worker's
        redelivered job, which queues again under the same message id)."""
        await self.save(record)
        subject = f"imaging.exports.{record.destination}.{record.rank}"
        await self._engine.js.publish(subject, record.key.encode(), headers={"Nats-Msg-Id": msg_id})

    async def save(self, record: ExportRecord) -> None:
        await self.records.put(record.key, record.model_dump_json().encode())

    async def get(self, key: str) -> ExportRecord | None:
        try:
            entry = await self.records.get(key)
        except KeyNotFoundError:
            return None
        return None if entry.value is None else ExportRecord.model_validate_json(entry.value)

    async def all(self) -> list[ExportRecord]:
        return [ExportRecord.model_validate_json(v) for _, v in await entries(self.records)]

    async def consumer(self, destination: str, rank: int, ack_wait: float) -> Any:
        return await self._engine.js.pull_subscribe(
            f"imaging.exports.{destination}.{rank}",
            durable=f"export-{destination}-{rank}",
            stream=EXPORTS_STREAM,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=-1
            ),
        )

    async def dead_letter(self, record: ExportRecord) -> None:
        await self._engine.js.publish(
            f"imaging.dead.export.{record.destination}",
            record.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"dead/{record.key}/{record.attempts}"},
        )


def attempts_of(msg: Msg) -> int:
    return int(msg.metadata.num_delivered)
