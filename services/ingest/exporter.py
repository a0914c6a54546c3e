"""The exporter role: every stored result to the destinations its rules name, once each.

- **Queued with the result.** The worker stores a result, then calls :meth:`Exporter.enqueue`
  before it marks the study done and acknowledges its job: a crash in between re-runs the job,
  which finds the stored result and queues again under the same message ids (JetStream drops
  the copies). Each (destination, result) has a record (``imaging-exports``) and a message on
  ``imaging.exports.<destination>.<rank>``.
- **Urgent first.** One task per destination takes the most urgent waiting result first
  (STAT, then URGENT, then ROUTINE; oldest first within a rank), after every delivery.
- **One dead destination never blocks another.** Destinations have their own tasks and
  consumers; within one, a failed delivery waits its back-off (a NAK with delay) while the
  others go on.
- **Retries.** Exponential back-off with jitter, at most ``max_attempts`` and ``max_age`` per
  destination; what is transient and what is permanent is the destination's failure table.
  Out of attempts, out of time or permanent: the dead letters (``imaging.dead.export.<dest>``)
  and the record says why, until `imaging-platform exports retry` queues it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import pydicom

from services.ingest import monitoring
from services.ingest.core import ExportRecord, ExportState, StudyRecord, export_rank
from services.ingest.delivery import (
    Delivery,
    DeliveryFailure,
    PermanentFailure,
    Sender,
    TransientFailure,
    stored_documents,
)
from services.ingest.destinations import Destinations
from services.ingest.engine import EXPORT_RANKS, Outbox, attempts_of
from services.ingest.spool import ResultStore

log = logging.getLogger("imaging.ingest.exporter")

_LONG_STRING = re.compile(r"[^\\\x00-\x1f]{1,64}")
FINISHED = frozenset({ExportState.DELIVERED, ExportState.DEAD_LETTERED, ExportState.DROPPED})


class Exporter:
    def __init__(
        self,
        outbox: Outbox,
        results: ResultStore,
        destinations: Destinations,
        senders: Mapping[str, Sender],
        ack_wait: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._results = results
        self._destinations = destinations
        self._senders = senders
        self._ack_wait = ack_wait
        self._clock = clock

    @property
    def configured(self) -> bool:
        return bool(self._destinations.rules)

    async def enqueue(self, record: StudyRecord, key: str, supersedes: str = "") -> int:
        """Queue ``key`` (a stored result of ``record``'s study) for every destination its
        rules name; returns how many. Idempotent: an export already recorded is queued again
        only while nothing has happened to it (the message may not have been sent)."""
        files = self._results.read(key)
        if not files:
            return 0
        answer = json.loads(files.get("response.json", b"{}"))
        refused = bool(answer.get("refusal"))
        triage = str(answer.get("triagePriority", ""))
        present = {d.kind for d in stored_documents(files)}
        named = self._destinations.identity(
            record.pipeline or str(answer.get("pipeline", "")), record.calling_ae, refused
        )
        routed = self._destinations.route(
            record.pipeline or str(answer.get("pipeline", "")), record.calling_ae, refused
        )
        now = self._clock()
        queued = 0
        for destination, kinds in sorted(routed.items()):
            wanted = tuple(sorted(kinds & present))
            if not wanted:
                continue
            export = ExportRecord(
                destination=destination,
                result_key=key,
                study_uid=record.study_uid,
                kinds=wanted,
                rank=export_rank(triage),
                triage=triage.removeprefix("TRIAGE_PRIORITY_"),
                supersedes=supersedes,
                identity=destination in named and "fhir" in wanted,
                created=now,
                updated=now,
            )
            known = await self._outbox.get(export.key)
            if known is not None and (known.state != ExportState.PENDING or known.attempts):
                continue
            await self._outbox.put(known or export, f"{destination}/{key}")
            queued += 1
        return queued

    async def run(self) -> None:
        await asyncio.gather(
            *(self._run_destination(name) for name in self._destinations.destinations),
            self._watch(),
        )

    async def _run_destination(self, name: str) -> None:
        consumers = {
            rank: await self._outbox.consumer(name, rank, self._ack_wait) for rank in EXPORT_RANKS
        }
        while True:
            message = None
            for rank in EXPORT_RANKS:
                try:
                    taken = await consumers[rank].fetch(1, timeout=0.2)
                except TimeoutError:
                    continue
                except Exception:
                    log.warning("fetching exports for %s failed", name, exc_info=True)
                    await asyncio.sleep(1.0)
                    continue
                if taken:
                    message = taken[0]
                    break
            if message is None:
                continue
            try:
                await self.handle(name, message)
            except Exception:  # the engine away: not acknowledged, so delivered again
                log.warning("an export to %s could not be finished", name, exc_info=True)

    async def handle(self, name: str, message: Any) -> None:
        record = await self._outbox.get(message.data.decode())
        if record is None or record.state in FINISHED:
            await message.ack_sync()
            return
        destination = self._destinations.destinations[name]
        policy = destination.retry
        attempt = attempts_of(message)
        now = self._clock()
        if now - record.created > policy.max_age_seconds:
            await self._dead(
                message, record, attempt, "older than the destination's max_age", "expired"
            )
            return
        files = await asyncio.to_thread(self._results.read, record.result_key)
        documents = stored_documents(files, record.kinds)
        if not documents:
            await self._dead(message, record, attempt, "the stored result is gone", "missing")
            return
        labels: dict[str, str] = {}
        if record.identity:
            labels = await asyncio.to_thread(self._patient, record.study_uid)
            if not labels:
                reason = "no stored instance names a valid patient identifier"
                await self._dead(message, record, attempt, reason, "no patient")
                return
        delivery = Delivery(
            destination=name,
            result_key=record.result_key,
            study_uid=record.study_uid,
            documents=tuple(documents),
            supersedes=record.supersedes,
            attempt=attempt,
            labels=labels,
        )
        keepalive = asyncio.ensure_future(self._in_progress(message))
        started = time.perf_counter()
        try:
            receipt = await asyncio.to_thread(self._senders[name].send, delivery)
        except PermanentFailure as failure:
            monitoring.EXPORT_FAILURES.labels(name, "permanent").inc()
            await self._dead(message, record, attempt, failure.reason, failure.status)
            return
        except DeliveryFailure as failure:
            await self._transient(message, record, attempt, failure)
            return
        except Exception as err:  # a sender's bug must not stop the destination
            log.exception("sender for %s failed unexpectedly", name)
            await self._transient(message, record, attempt, TransientFailure(type(err).__name__))
            return
        finally:
            keepalive.cancel()
            monitoring.EXPORT_SECONDS.labels(name).observe(time.perf_counter() - started)
        monitoring.EXPORTS.labels(name, "delivered").inc()
        await self._outbox.save(
            record.to(ExportState.DELIVERED, self._clock(), attempts=attempt, receipt=receipt,
                      failure="", status="")
        )  # fmt: skip
        await message.ack_sync()

    def _patient(self, study_uid: str) -> dict[str, str]:
        """PatientID and IssuerOfPatientID of the study's stored instances, when they agree and
        are valid LO values (PS3.5 6.2: at most 64 characters, no backslash or control
        characters); {} otherwise. Never logged."""
        found: set[tuple[str, str]] = set()
        for path in self._results.spool.study_files(study_uid):
            try:
                ds = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID"]
                )
            except Exception:
                continue
            patient, issuer = ds.get("PatientID"), ds.get("IssuerOfPatientID") or ""
            if not isinstance(patient, str) or not isinstance(issuer, str):
                return {}
            found.add((patient.strip(), issuer.strip()))
        if len(found) != 1:
            return {}
        ((patient, issuer),) = found
        if not _LONG_STRING.fullmatch(patient) or (issuer and not _LONG_STRING.fullmatch(issuer)):
            return {}
        return {"patient_id": patient, **({"patient_issuer": issuer} if issuer else {})}

    async def _transient(
        self, message: Any, record: ExportRecord, attempt: int, failure: DeliveryFailure
    ) -> None:
        name = record.destination
        monitoring.EXPORT_FAILURES.labels(name, "transient").inc()
        policy = self._destinations.destinations[name].retry
        if attempt >= policy.max_attempts:
            reason = f"{failure.reason} (attempt {attempt} of {policy.max_attempts})"
            await self._dead(message, record, attempt, reason, failure.status)
            return
        await self._outbox.save(
            record.to(ExportState.RETRYING, self._clock(), attempts=attempt,
                      failure=failure.reason, status=failure.status)
        )  # fmt: skip
        await message.nak(delay=policy.delay(attempt) * random.uniform(0.8, 1.2))

    async def _dead(
        self, message: Any, record: ExportRecord, attempt: int, reason: str, status: str
    ) -> None:
        monitoring.EXPORTS.labels(record.destination, "dead_lettered").inc()
        dead = record.to(
            ExportState.DEAD_LETTERED,
            self._clock(),
            attempts=attempt,
            failure=reason,
            status=status,
        )
        await self._outbox.dead_letter(dead)
        await self._outbox.save(dead)
        await message.ack_sync()
        log.warning("export to %s dead-lettered: %s", record.destination, status or reason)

    async def _in_progress(self, message: Any) -> None:
        while True:
            await asyncio.sleep(max(self._ack_wait / 3, 1.0))
            await message.in_progress()

    async def _watch(self, interval: float = 5.0) -> None:
        """Backlog and oldest age per destination, for the alerts."""
        while True:
            try:
                records = await self._outbox.all()
                now = self._clock()
                for name in self._destinations.destinations:
                    waiting = [
                        r for r in records
                        if r.destination == name
                        and r.state in (ExportState.PENDING, ExportState.RETRYING)
                    ]  # fmt: skip
                    monitoring.EXPORT_BACKLOG.labels(name).set(len(waiting))
                    oldest = max((now - r.created for r in waiting), default=0.0)
                    monitoring.EXPORT_OLDEST_SECONDS.labels(name).set(oldest)
            except Exception:
                log.debug("export backlog not read", exc_info=True)
            await asyncio.sleep(interval)


async def retry_export(outbox: Outbox, key: str, now: float) -> ExportRecord | None:
    """Queue a dead-lettered or dropped export again (`exports retry`), attempts from one and
    its age from now; other states are left as they are."""
    record = await outbox.get(key)
    if record is None or record.state not in (ExportState.DEAD_LETTERED, ExportState.DROPPED):
        return record
    again = record.to(
        ExportState.PENDING, now, attempts=0, retries=record.retries + 1, created=now,
        failure="", status="",
    )  # fmt: skip
    await outbox.put(again, f"{record.destination}/{record.result_key}/retry-{again.retries}")
    return again


async def drop_export(outbox: Outbox, key: str, now: float) -> ExportRecord | None:
    """Give up an export not yet finished (`exports drop`): its exporter skips it."""
    record = await outbox.get(key)
    if record is None or record.state in FINISHED:
        return record
    dropped = record.to(ExportState.DROPPED, now)
    await outbox.save(dropped)
    return dropped
