"""The Ingest gRPC API: study records and stored results <-> messages, nothing else."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import grpc

from services.api.imaging.v1 import gateway_pb2, ingest_pb2, ingest_pb2_grpc
from services.common.dicom import is_uid
from services.common.errors import InvalidInput, NotFound
from services.ingest.core import ExportRecord, ExportState, StudyRecord, StudyState
from services.ingest.delivery import stored_documents
from services.ingest.engine import Engine, Outbox
from services.ingest.exporter import drop_export, retry_export
from services.ingest.spool import ResultStore, Spool
from services.ingest.worker import Completer

_STATES: dict[StudyState, Any] = {
    state: ingest_pb2.StudyState.Value(f"STUDY_STATE_{state.name}") for state in StudyState
}


def study_message(record: StudyRecord) -> ingest_pb2.Study:
    return ingest_pb2.Study(
        study_instance_uid=record.study_uid,
        state=_STATES[record.state],
        instances=record.instances,
        calling_ae_title=record.calling_ae,
        source_address=record.source_address,
        completion_reason=record.completion_reason,
        first_received=record.first_received,
        last_received=record.last_received,
        completed=record.completed,
        finished=record.finished,
        generation=record.generation,
        pipeline=record.pipeline,
        result_key=record.result_key,
        analysed_instances=record.analysed_instances,
        not_analysed=[
            ingest_pb2.NotAnalysed(
                series_instance_uid=n.series_instance_uid,
                sop_class_uid=n.sop_class_uid,
                modality=n.modality,
                instances=n.instances,
                reason=n.reason,
            )
            for n in record.not_analysed
        ],
        error=record.error,
        attempts=record.attempts,
        results=list(record.results),
    )


def result_documents(files: dict[str, bytes]) -> list[gateway_pb2.EncodedObject]:
    """The stored answer first (findings JSON), then the documents in their stored order."""
    if not files:
        return []
    findings = gateway_pb2.EncodedObject(
        kind="findings",
        media_type="application/json",
        data=files.get("response.json", b""),
        name="findings",
    )
    return [findings] + [
        gateway_pb2.EncodedObject(
            kind=d.kind,
            media_type=d.media_type,
            data=d.data,
            sop_class_uid=d.sop_class_uid,
            sop_instance_uid=d.sop_instance_uid,
            name=d.name,
        )
        for d in stored_documents(files)
    ]


_EXPORT_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\.[0-9a-f]{1,64}")
_EXPORT_STATES: dict[ExportState, Any] = {
    state: ingest_pb2.ExportState.Value(f"EXPORT_STATE_{state.name}") for state in ExportState
}


def export_message(record: ExportRecord) -> ingest_pb2.Export:
    return ingest_pb2.Export(
        key=record.key,
        destination=record.destination,
        result_key=record.result_key,
        study_instance_uid=record.study_uid,
        state=_EXPORT_STATES[record.state],
        kinds=list(record.kinds),
        triage=record.triage,
        attempts=record.attempts,
        created=record.created,
        updated=record.updated,
        failure=record.failure,
        status=record.status,
        receipt=record.receipt,
        supersedes=record.supersedes,
    )


def _uid(value: str) -> str:
    if not is_uid(value):
        raise InvalidInput("study_instance_uid is not a DICOM UID")
    return value


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        results: ResultStore,
        completer: Completer,
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._results = results
        self._completer = completer
        self._outbox = Outbox(engine)

    async def _record(self, study_uid: str) -> StudyRecord:
        record, _ = await self._engine.study(_uid(study_uid))
        if record is None:
            raise NotFound("no such study in the ingest")
        return record

    async def ListStudies(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.ListStudiesRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListStudiesResponse:
        records = await self._engine.studies()
        records.sort(key=lambda r: max(r.last_received, r.finished), reverse=True)
        limit = request.limit or 100
        return ingest_pb2.ListStudiesResponse(studies=[study_message(r) for r in records[:limit]])

    async def GetStudy(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.GetStudyRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.Study:
        record = await self._record(request.study_instance_uid)
        message = study_message(record)
        if request.documents and record.result_key:
            files = await asyncio.to_thread(self._results.read, record.result_key)
            message.documents.extend(result_documents(files))
        return message

    async def CloseStudy(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.CloseStudyRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.Study:
        record = await self._record(request.study_instance_uid)
        closed = await self._completer.close(record.study_uid, "imaging-platform studies close")
        return study_message(closed or record)

    async def PurgeStudy(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.PurgeStudyRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.PurgeStudyResponse:
        record = await self._record(request.study_instance_uid)
        await self._engine.forget(record.study_uid)
        deleted = await asyncio.to_thread(self._spool.delete_study, record.study_uid)
        results = 0
        for key in record.results:
            results += int(await asyncio.to_thread(self._results.delete, key))
        return ingest_pb2.PurgeStudyResponse(instances_deleted=deleted, results_deleted=results)

    async def ListExports(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.ListExportsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListExportsResponse:
        wanted = {s for s in request.states}
        records = [
            r
            for r in await self._outbox.all()
            if (not request.destination or r.destination == request.destination)
            and (not wanted or _EXPORT_STATES[r.state] in wanted)
        ]
        records.sort(key=lambda r: r.updated, reverse=True)
        limit = request.limit or 100
        return ingest_pb2.ListExportsResponse(exports=[export_message(r) for r in records[:limit]])

    async def _export(self, key: str) -> ExportRecord:
        record = await self._outbox.get(key) if _EXPORT_KEY.fullmatch(key) else None
        if record is None:
            raise NotFound("no such export (keys look like <destination>.<result key>)")
        return record

    async def GetExport(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.ExportRef, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.Export:
        return export_message(await self._export(request.key))

    async def RetryExport(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.ExportRef, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.Export:
        record = await self._export(request.key)
        return export_message(await retry_export(self._outbox, record.key, time.time()) or record)

    async def DropExport(  # noqa: N802 (gRPC naming)
        self, request: ingest_pb2.ExportRef, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.Export:
        record = await self._export(request.key)
        return export_message(await drop_export(self._outbox, record.key, time.time()) or record)
