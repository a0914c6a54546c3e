"""`imaging-platform studies`: where a study sent over DICOM stands, and its results."""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path

import grpc

from services.api.imaging.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import tls
from services.common.tls_files import TlsFiles


class IngestClient:
    """The ingest's gRPC API (mutual TLS when the ingest has a CA)."""

    def __init__(self, address: str, files: TlsFiles, timeout: float = 30.0) -> None:
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        credentials = tls.channel_credentials(files)
        self.channel = (
            grpc.insecure_channel(address, options=options)
            if credentials is None
            else grpc.secure_channel(address, credentials, options=options)
        )
        self.stub = ingest_pb2_grpc.IngestStub(self.channel)
        self._timeout = timeout

    def list(self, limit: int = 100) -> list[ingest_pb2.Study]:
        reply = self.stub.ListStudies(
            ingest_pb2.ListStudiesRequest(limit=limit), timeout=self._timeout
        )
        return list(reply.studies)

    def show(self, study_uid: str, documents: bool = False) -> ingest_pb2.Study:
        request = ingest_pb2.GetStudyRequest(study_instance_uid=study_uid, documents=documents)
        return self.stub.GetStudy(request, timeout=self._timeout)  # type: ignore[no-any-return]

    def close_study(self, study_uid: str) -> ingest_pb2.Study:
        request = ingest_pb2.CloseStudyRequest(study_instance_uid=study_uid)
        return self.stub.CloseStudy(request, timeout=self._timeout)  # type: ignore[no-any-return]

    def purge(self, study_uid: str) -> ingest_pb2.PurgeStudyResponse:
        request = ingest_pb2.PurgeStudyRequest(study_instance_uid=study_uid)
        return self.stub.PurgeStudy(request, timeout=self._timeout)  # type: ignore[no-any-return]

    def exports(self, destination: str = "", limit: int = 100) -> builtins.list[ingest_pb2.Export]:
        request = ingest_pb2.ListExportsRequest(destination=destination, limit=limit)
        return list(self.stub.ListExports(request, timeout=self._timeout).exports)

    def export(self, key: str) -> ingest_pb2.Export:
        return self.stub.GetExport(ingest_pb2.ExportRef(key=key), timeout=self._timeout)  # type: ignore[no-any-return]

    def retry_export(self, key: str) -> ingest_pb2.Export:
        return self.stub.RetryExport(ingest_pb2.ExportRef(key=key), timeout=self._timeout)  # type: ignore[no-any-return]

    def drop_export(self, key: str) -> ingest_pb2.Export:
        return self.stub.DropExport(ingest_pb2.ExportRef(key=key), timeout=self._timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.channel.close()


def state_name(study: ingest_pb2.Study) -> str:
    return ingest_pb2.StudyState.Name(study.state).removeprefix("STUDY_STATE_").lower()


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def table(studies: list[ingest_pb2.Study]) -> str:
    lines = [f"{'STUDY':<44} {'STATE':<14} {'INST':>5} {'CALLER':<16} {'PIPELINE':<24} LAST"]
    for s in studies:
        lines.append(
            f"{s.study_instance_uid[:44]:<44} {state_name(s):<14} {s.instances:>5} "
            f"{s.calling_ae_title[:16]:<16} {s.pipeline[:24]:<24} {_when(s.last_received)}"
        )
    return "\n".join(lines)


def describe(s: ingest_pb2.Study) -> str:
    lines = [
        f"study            {s.study_instance_uid}",
        f"state            {state_name(s)} (generation {s.generation}, attempts {s.attempts})",
        f"instances        {s.instances} from {s.calling_ae_title or '-'} "
        f"({s.source_address or '-'})",
        f"received         {_when(s.first_received)} .. {_when(s.last_received)}",
        f"complete         {_when(s.completed)}: {s.completion_reason or '-'}",
        f"finished         {_when(s.finished)}",
        f"pipeline         {s.pipeline or '-'} ({s.analysed_instances} instances analysed)",
        f"result           {s.result_key or '-'}",
    ]
    if len(s.results) > 1:
        lines.append(f"earlier results  {', '.join(k for k in s.results if k != s.result_key)}")
    if s.error:
        lines.append(f"reason           {s.error}")
    for line in _findings(s):
        lines.append(line)
    for item in s.not_analysed:
        lines.append(
            f"not analysed     {item.instances} x {item.modality or '?'} "
            f"(series {item.series_instance_uid}): {item.reason}"
        )
    return "\n".join(lines)


def _findings(s: ingest_pb2.Study) -> list[str]:
    """The stored answer's findings and measurements (when the documents were fetched)."""
    stored = next((d for d in s.documents if d.kind == "findings"), None)
    if stored is None:
        return []
    answer = json.loads(stored.data)
    lines = []
    for finding in answer.get("findings", []):
        status = finding.get("status", "").removeprefix("FINDING_STATUS_")
        lines.append(
            f"finding          {finding.get('displayName') or finding.get('code', '?')}: "
            f"p={finding.get('probability', 0.0):.4f} {status}"
        )
    for measurement in answer.get("measurements", []):
        lines.append(
            f"measurement      {measurement.get('displayName') or measurement.get('code', '?')}: "
            f"{measurement.get('value', 0.0):.1f} {measurement.get('unit', '')}"
        )
    refusal = answer.get("refusal") or {}
    if refusal:
        lines.append(f"refused          {refusal.get('kind', '')}: {refusal.get('reason', '')}")
    return lines


def write_documents(study: ingest_pb2.Study, out: Path) -> list[Path]:
    """The stored result's files: findings JSON, then SR/SEG/SC (.dcm) and FHIR (.json)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, document in enumerate(study.documents):
        extension = ".json" if document.media_type.endswith("json") else ".dcm"
        target = out / f"{index:02d}-{document.name or document.kind}{extension}"
        target.write_bytes(document.data)
        written.append(target)
    return written


def export_state(export: ingest_pb2.Export) -> str:
    return ingest_pb2.ExportState.Name(export.state).removeprefix("EXPORT_STATE_").lower()


def exports_table(exports: list[ingest_pb2.Export]) -> str:
    lines = [f"{'EXPORT':<56} {'STATE':<14} {'TRIAGE':<8} {'TRIES':>5}  LAST"]
    for e in exports:
        last = e.receipt or (f"{e.status}: {e.failure}" if e.failure else "-")
        lines.append(
            f"{e.key[:56]:<56} {export_state(e):<14} {e.triage or '-':<8} {e.attempts:>5}  "
            f"{last[:60]}"
        )
    return "\n".join(lines)


def describe_export(e: ingest_pb2.Export) -> str:
    lines = [
        f"export           {e.key}",
        f"destination      {e.destination}",
        f"study            {e.study_instance_uid}",
        f"result           {e.result_key} ({', '.join(e.kinds)})",
        f"state            {export_state(e)} after {e.attempts} attempt(s), "
        f"triage {e.triage or '-'}",
        f"queued           {_when(e.created)}; last change {_when(e.updated)}",
    ]
    if e.supersedes:
        lines.append(f"supersedes       {e.supersedes}")
    if e.receipt:
        lines.append(f"receipt          {e.receipt}")
    if e.failure:
        lines.append(f"last failure     {e.status or '-'}: {e.failure}")
    return "\n".join(lines)
