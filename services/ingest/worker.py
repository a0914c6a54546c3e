"""The worker role: completes studies, analyses them through the gateway, stores one result.

- :class:`Completer` declares a receiving study complete once its quiet period has passed (or
  when closed by hand), records why and when, and queues its analysis job. A crash between
  the two is repaired on its next pass (a COMPLETE study is queued again; the job's message id
  makes the second copy a no-op). It also deletes instances past their retention.
- :class:`Analyst` takes jobs at least once. A job for a generation that is no longer current
  (the study re-opened) or already finished is acknowledged and dropped. The chosen series go
  to the gateway's ``AnalyzeStream`` exactly as a client's would, with the originating caller
  asserted (only the worker's identity may) and the result key as the UID seed.
- A result is stored under its key before the study is marked done and the job acknowledged:
  a crash in between re-runs the job, which finds the result and stores nothing new.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.pipelines import PipelineRegistry
from services.common.remote_errors import error_kind
from services.common.tls import channel_credentials
from services.common.tls_files import TlsFiles
from services.ingest import monitoring
from services.ingest.core import (
    FINISHED,
    InstanceFacts,
    Plan,
    StudyRecord,
    StudyState,
    choose,
    due,
    instances_digest,
    new_study,
    quiet_reason,
    result_key,
)
from services.ingest.dimse import Malformed, read_facts
from services.ingest.engine import Engine, Job, attempts_of
from services.ingest.exporter import Exporter
from services.ingest.spool import ResultStore, Spool, sha256_of

log = logging.getLogger("imaging.ingest.worker")

_CHUNK = 1 << 20
# Failures a later attempt may not see (the gateway or Triton restarting, overload).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


# Error kinds (services/common/errors.py) another attempt would meet again, whatever their code.
FINAL_KINDS = frozenset({"TOO_LARGE"})


class Completer:
    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        retention_seconds: float,
        quiet_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._retention = retention_seconds
        self._quiet = quiet_seconds
        self._clock = clock

    async def close(self, study_uid: str, who: str) -> StudyRecord | None:
        """Complete a receiving study now (``imaging-platform studies close``)."""
        now = self._clock()
        reason = f"closed by {who}" if who else "closed by request"

        def closing(record: StudyRecord | None) -> StudyRecord | None:
            if record is None or record.state != StudyState.RECEIVING:
                return None
            return record.complete(now, reason)

        record = await self._engine.change(study_uid, closing)
        if record is not None and record.state == StudyState.COMPLETE:
            monitoring.STUDIES_COMPLETED.labels("closed").inc()
            record = await self._queue(record)
        return record

    async def _queue(self, record: StudyRecord) -> StudyRecord | None:
        await self._engine.enqueue(Job(record.study_uid, record.generation))

        def queued(current: StudyRecord | None) -> StudyRecord | None:
            if current is None or current.generation != record.generation:
                return None
            if current.state != StudyState.COMPLETE:
                return None
            return current.to(StudyState.QUEUED)

        return await self._engine.change(record.study_uid, queued) or record

    async def tick(self) -> None:
        """One pass over every study (a few ms per hundred studies)."""
        now = self._clock()
        counts: dict[str, int] = dict.fromkeys(StudyState, 0)
        for record in await self._engine.studies():
            counts[record.state] += 1
            if due(record, now):
                reason = quiet_reason(record)

                def completing(
                    current: StudyRecord | None, reason: str = reason
                ) -> StudyRecord | None:
                    if current is None or not due(current, now):
                        return None
                    return current.complete(now, reason)

                completed = await self._engine.change(record.study_uid, completing)
                if completed is not None and completed.state == StudyState.COMPLETE:
                    monitoring.STUDIES_COMPLETED.labels("quiet").inc()
                    await self._queue(completed)
            elif record.state == StudyState.COMPLETE:
                await self._queue(record)  # queued before a crash, or not at all
            elif (
                record.state in FINISHED
                and record.finished
                and now - record.finished >= self._retention
                and self._spool.count(record.study_uid)
            ):
                deleted = await asyncio.to_thread(self._spool.delete_study, record.study_uid)
                log.info("retention: %d instances of a finished study deleted", deleted)
        for state, count in counts.items():
            monitoring.STUDIES.labels(state).set(count)

    async def resume(self) -> None:
        """Studies whose instances are on disk but whose record is missing (the engine lost
        nothing acknowledged, but a receiver may have died between the disk and the engine)
        are received again, so they complete and get analysed."""
        now = self._clock()
        for study_uid in self._spool.studies():
            count = self._spool.count(study_uid)
            if not count:
                continue

            def adopt(
                record: StudyRecord | None, uid: str = study_uid, count: int = count
            ) -> StudyRecord | None:
                if record is not None:
                    return None
                return new_study(uid, now).received(now, "", "", count, self._quiet)

            await self._engine.change(study_uid, adopt)

    async def run(self, interval: float = 1.0) -> None:
        await self.resume()
        while True:
            try:
                await self.tick()
            except Exception:  # the engine away for a moment: the next pass repairs
                log.warning("completion pass failed", exc_info=True)
            await asyncio.sleep(interval)


@dataclass(frozen=True)
class Outcome:
    state: StudyState
    changes: dict[str, Any]


class Permanent(Exception):
    """A failure another attempt would repeat."""


class Retryable(Exception):
    pass


class GatewayCaller:
    """AnalyzeStream over (m)TLS with the worker's API key."""

    def __init__(self, address: str, files: TlsFiles, api_key: str, timeout: float) -> None:
        credentials = channel_credentials(files)
        options = [
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 256 << 20),
        ]
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options)
        )
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout = timeout

    async def analyze(
        self,
        spool: Spool,
        plan: Plan,
        record: StudyRecord,
        seed: str,
        request_id: str,
        predecessors: tuple[bytes, ...] = (),
    ) -> gateway_pb2.AnalyzeResponse:
        """``predecessors``: the SRs of the study's earlier result, which the new SR names as
        its earlier versions (AnalyzeHeader.predecessor_documents)."""
        assert plan.pipeline is not None
        volume = plan.pipeline.kind == "volume"
        header = gateway_pb2.AnalyzeHeader(
            pipeline=plan.pipeline.name,
            priority=gateway_pb2.REQUEST_PRIORITY_ROUTINE,
            client_request_id=request_id,
            options=gateway_pb2.OutputOptions(
                dicom_sr=True,
                dicom_seg=volume,
                dicom_heatmap=not volume,
                fhir=True,
                report_refusal=True,
            ),
            uid_seed=seed,
            predecessor_documents=list(predecessors),
        )
        if record.calling_ae:
            header.origin.calling_ae_title = record.calling_ae
            header.origin.source_address = record.source_address
        folder = spool.study_dir(record.study_uid)

        async def messages() -> AsyncIterator[gateway_pb2.AnalyzeChunk]:
            yield gateway_pb2.AnalyzeChunk(header=header)
            for index, fact in enumerate(plan.instances):
                data = await asyncio.to_thread((folder / fact.name).read_bytes)
                for start in range(0, len(data), _CHUNK):
                    yield gateway_pb2.AnalyzeChunk(
                        chunk=gateway_pb2.InstanceChunk(
                            instance_index=index, data=data[start : start + _CHUNK]
                        )
                    )

        try:
            response: gateway_pb2.AnalyzeResponse = await self._stub.AnalyzeStream(
                messages(), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as err:
            reason = f"gateway: {err.code().name}: {err.details()}"
            if err.code() in RETRYABLE and error_kind(err) not in FINAL_KINDS:
                raise Retryable(reason) from err
            raise Permanent(reason) from err
        return response

    async def close(self) -> None:
        await self._channel.close()


def documents(response: gateway_pb2.AnalyzeResponse, manifest: dict[str, Any]) -> dict[str, bytes]:
    """The files of one stored result: the answer without its documents' bytes, each
    document in its own file, and a manifest of what was analysed."""
    files: dict[str, bytes] = {}
    listed = []
    for index, obj in enumerate(response.outputs):
        extension = ".json" if obj.media_type.endswith("json") else ".dcm"
        name = f"{index:02d}-{obj.name or obj.kind}{extension}"
        files[name] = bytes(obj.data)
        listed.append(
            {
                "file": name,
                "kind": obj.kind,
                "media_type": obj.media_type,
                "sop_class_uid": obj.sop_class_uid,
                "sop_instance_uid": obj.sop_instance_uid,
                "name": obj.name,
            }
        )
    answer = gateway_pb2.AnalyzeResponse()
    answer.CopyFrom(response)
    del answer.outputs[:]
    files["response.json"] = json_format.MessageToJson(answer, indent=1).encode()
    files["manifest.json"] = json.dumps({**manifest, "documents": listed}, indent=1).encode()
    return files


class Analyst:
    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        results: ResultStore,
        registry: PipelineRegistry,
        gateway: GatewayCaller,
        max_attempts: int,
        retry_seconds: float,
        job_timeout: float,
        clock: Callable[[], float] = time.time,
        exporter: Exporter | None = None,
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._results = results
        self._exporter = exporter
        self._registry = registry
        self._gateway = gateway
        self._max_attempts = max_attempts
        self._retry = retry_seconds
        self._job_timeout = job_timeout
        self._clock = clock

    async def run(self) -> None:
        subscription = await self._engine.jobs()
        while True:
            try:
                messages = await subscription.fetch(1, timeout=1.0)
            except TimeoutError:
                continue
            except Exception:
                log.warning("fetching jobs failed", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                try:
                    await self.handle(message)
                except Exception:  # the engine away: not acknowledged, so redelivered
                    log.warning(
                        "a job could not be finished; it will be redelivered", exc_info=True
                    )

    async def handle(self, message: Any) -> None:
        job = Job.decode(message.data)
        attempts = attempts_of(message)
        record, _ = await self._engine.study(job.study_uid)
        if record is None or record.generation != job.generation or record.state in FINISHED:
            monitoring.ANALYSES.labels("stale").inc()
            await message.ack_sync()
            return
        if attempts > self._max_attempts:  # e.g. a worker that crashed on it every time
            await self._dead_letter(message, job, record.error or "attempts exhausted", attempts)
            return
        await self._set(job, StudyState.ANALYSING, attempts=attempts)
        started = time.perf_counter()
        keepalive = asyncio.ensure_future(self._in_progress(message))
        try:
            outcome = await self.analyse(record, attempts)
        except Retryable as err:
            monitoring.ANALYSES.labels("retry").inc()
            if attempts >= self._max_attempts:
                await self._dead_letter(message, job, str(err), attempts)
                return
            await self._set(job, StudyState.QUEUED, error=str(err))
            delay = self._retry * 2 ** (attempts - 1) * random.uniform(0.8, 1.2)
            await message.nak(delay=delay)
            return
        except Permanent as err:
            monitoring.ANALYSES.labels("failed").inc()
            await self._engine.dead_letter(job, str(err), attempts)
            await self._set(job, StudyState.FAILED, error=str(err), finished=self._clock())
            await message.ack_sync()
            return
        finally:
            keepalive.cancel()
            monitoring.ANALYSIS_SECONDS.observe(time.perf_counter() - started)
        await self._set(job, outcome.state, **outcome.changes)
        monitoring.ANALYSES.labels(outcome.state.value).inc()
        await message.ack_sync()

    async def _in_progress(self, message: Any) -> None:
        while True:
            await asyncio.sleep(max(self._job_timeout / 3, 1.0))
            await message.in_progress()

    async def _dead_letter(self, message: Any, job: Job, reason: str, attempts: int) -> None:
        monitoring.ANALYSES.labels("dead_lettered").inc()
        await self._engine.dead_letter(job, reason, attempts)
        await self._set(
            job, StudyState.DEAD_LETTERED, error=reason, finished=self._clock(), attempts=attempts
        )
        await message.ack_sync()

    async def _set(self, job: Job, state: StudyState, **changes: Any) -> None:
        def setting(record: StudyRecord | None) -> StudyRecord | None:
            if record is None or record.generation != job.generation:
                return None  # re-opened meanwhile: the new generation has its own job
            if "result_key" in changes and changes["result_key"] not in record.results:
                changes["results"] = (*record.results, changes["result_key"])
            return record.to(state, **changes)

        await self._engine.change(job.study_uid, setting)

    async def facts(self, study_uid: str) -> tuple[list[InstanceFacts], list[str]]:
        def read() -> tuple[list[InstanceFacts], list[str]]:
            facts, unreadable = [], []
            for path in self._spool.study_files(study_uid):
                try:
                    facts.append(read_facts(path, sha256_of(path)))
                except (Malformed, OSError):
                    unreadable.append(path.name)
            return facts, unreadable

        return await asyncio.to_thread(read)

    async def analyse(self, record: StudyRecord, attempts: int) -> Outcome:
        facts, unreadable = await self.facts(record.study_uid)
        if unreadable:
            log.warning("%d stored instances could not be read again", len(unreadable))
        plan = choose(facts, self._registry)
        now = self._clock()
        common = {"not_analysed": plan.not_analysed, "finished": now}
        if plan.pipeline is None:
            return Outcome(StudyState.REFUSED, {**common, "error": plan.reason, "pipeline": ""})
        limit = _over_limits(plan)
        if limit:
            return Outcome(
                StudyState.REFUSED, {**common, "error": limit, "pipeline": plan.pipeline.name}
            )
        digest = instances_digest(plan.instances)
        version = plan.pipeline.model.version
        for _ in range(2):  # a second time only if Triton served another model version
            key = result_key(record.study_uid, digest, plan.pipeline.name, version)
            stored = await asyncio.to_thread(self._results.read, key)
            if stored:  # a redelivered job: its result was stored, maybe not yet queued
                await self._export(record, key)
                return self._outcome_of_stored(plan, key, stored, common)
            request_id = f"ingest-{key[:16]}-{attempts}"
            # Late instances re-opened the study: the new SR supersedes the latest earlier
            # result's (its Predecessor Documents Sequence names them). One over the gateway's
            # limit (1 MiB each, AnalyzeHeader.predecessor_documents) is left out, not failed on.
            earlier = [k for k in record.results if k != key]
            predecessors: tuple[bytes, ...] = ()
            if earlier:
                files = await asyncio.to_thread(self._results.read, earlier[-1])
                listed = json.loads(files.get("manifest.json", b"{}")).get("documents", [])
                predecessors = tuple(
                    files[d["file"]]
                    for d in listed
                    if d.get("kind") == "dicom_sr"
                    and d.get("file") in files
                    and len(files[d["file"]]) <= 1 << 20
                )[:8]
            response = await self._gateway.analyze(
                self._spool, plan, record, key, request_id, predecessors
            )
            served = response.model.version
            if served and served != version:
                version = served
                continue
            manifest = {
                "study_uid": record.study_uid,
                "generation": record.generation,
                "pipeline": plan.pipeline.name,
                "model": {"name": response.model.name, "version": served},
                "instances": sorted(f.sop_instance_uid for f in plan.instances),
                "instances_digest": digest,
                "not_analysed": [n.model_dump() for n in plan.not_analysed],
                "created": now,
            }
            await asyncio.to_thread(self._results.put, key, documents(response, manifest))
            stored = await asyncio.to_thread(self._results.read, key)
            await self._export(record, key)
            return self._outcome_of_stored(plan, key, stored, common)
        raise Retryable("the served model version changed during the analysis")

    async def _export(self, record: StudyRecord, key: str) -> None:
        """Queue the stored result for its destinations before the study is marked done and
        the job acknowledged (services/ingest/exporter.py). An earlier result of the study
        (late instances re-opened it) is named as superseded."""
        if self._exporter is None or not self._exporter.configured:
            return
        earlier = [k for k in record.results if k != key]
        await self._exporter.enqueue(record, key, earlier[-1] if earlier else "")

    @staticmethod
    def _outcome_of_stored(
        plan: Plan, key: str, stored: dict[str, bytes], common: dict[str, Any]
    ) -> Outcome:
        answer = json.loads(stored.get("response.json", b"{}"))
        refusal = answer.get("refusal") or {}
        assert plan.pipeline is not None
        changes = {
            **common,
            "pipeline": plan.pipeline.name,
            "result_key": key,
            "analysed_instances": len(plan.instances),
            "error": refusal.get("reason", ""),
        }
        return Outcome(StudyState.REFUSED if refusal else StudyState.DONE, changes)


def _over_limits(plan: Plan) -> str:
    """The pipeline's own limits (services/common/pipelines.py StudyLimits), judged before
    sending: a study over them is refused with the reason, not retried. The gateway's global
    limits stay the ceiling (a study over those fails there with TOO_LARGE, also final)."""
    assert plan.pipeline is not None
    limits = plan.pipeline.limits
    count = len(plan.instances)
    size = sum(f.size for f in plan.instances)
    name = plan.pipeline.name
    if limits.max_instances is not None and count > limits.max_instances:
        return f"{count} instances exceed {name}'s limit of {limits.max_instances}"
    if limits.max_study_bytes is not None and size > limits.max_study_bytes:
        return f"{size} bytes exceed {name}'s limit of {limits.max_study_bytes}"
    return ""
