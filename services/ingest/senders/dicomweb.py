"""DICOMweb: a result's DICOM documents to a STOW-RS service (PS3.18 10.5), in one request.

``POST {url}/studies/{study_uid}``, ``multipart/related; type="application/dicom"`` with one
part per DICOM document (FHIR documents are not DICOM and are skipped), asking for the answer
as ``application/dicom+json``. The answer's status says the outcome (PS3.18 10.5.3): 200 every
instance stored, 202 some stored and some failed (or stored with warnings), 409 none stored.
Each Failed SOP Sequence (0008,1198) item's Failure Reason (0008,1197) is classified by the
destination's failure table as ``dimse:0x<reason>`` (e.g. ``dimse:0xA700`` out of resources,
transient; ``dimse:0xC000`` cannot understand, permanent). A delivery with any failed instance
fails as a whole, permanently when any of its failures is (a retry would never store it all),
and is sent whole again on a retry: a STOW-RS service keeps one copy per SOP Instance UID.
"""

from __future__ import annotations

import uuid
from typing import Any

from services.ingest.delivery import Delivery, Document
from services.ingest.destinations import DicomWebDestination
from services.ingest.senders.http import exchange, failure

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE_UID = "00081155"


def multipart(documents: list[Document], boundary: str) -> bytes:
    """The documents as the parts of one multipart/related body (RFC 2387)."""
    delimiter = f"--{boundary}\r\n".encode()
    parts = [delimiter + f"Content-Type: {DICOM}\r\n\r\n".encode() + d.data for d in documents]
    return b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode()


def _items(answer: Any, tag: str) -> list[dict[str, Any]]:
    if not isinstance(answer, dict):
        return []
    element = answer.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return [item for item in values if isinstance(item, dict)]


def _value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


class DicomWebSender:
    """STOW-RS to one :class:`DicomWebDestination`; blocking, never retrying by itself."""

    def __init__(self, destination: DicomWebDestination) -> None:
        self.destination = destination

    def url(self, study_uid: str) -> str:
        base = self.destination.url.rstrip("/")
        return f"{base}/studies/{study_uid}" if study_uid else f"{base}/studies"

    def send(self, delivery: Delivery) -> str:
        documents = [d for d in delivery.documents if d.media_type == DICOM]
        if not documents:
            return "no DICOM document to store"
        boundary = uuid.uuid4().hex
        table = self.destination.failures
        reply = exchange(
            "POST",
            self.url(delivery.study_uid),
            body=multipart(documents, boundary),
            headers={
                "Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
            auth=self.destination.auth,
            ca_file=self.destination.ca_file,
            timeout=self.destination.timeout_seconds,
            table=table,
            what="STOW-RS",
            accept=(409,),
        )
        answer = reply.json()
        failed = _items(answer, FAILED_SOP_SEQUENCE)
        stored = _items(answer, REFERENCED_SOP_SEQUENCE)
        if reply.status == 409 and not failed:
            raise failure(table, "http:409", "STOW-RS: no instance stored (HTTP 409)", "HTTP 409")
        if failed:
            reasons = []
            for item in failed:
                code = _value(item, FAILURE_REASON)
                reasons.append(f"dimse:0x{code:04X}" if isinstance(code, int) else "dimse:unknown")
            permanent = [r for r in reasons if table.is_permanent(r)]
            worst = permanent[0] if permanent else reasons[0]
            reason = (
                f"STOW-RS: {len(failed)} of {len(documents)} instances not stored "
                f"(HTTP {reply.status}; {', '.join(sorted(set(reasons)))})"
            )
            raise failure(table, worst, reason, worst.removeprefix("dimse:"))
        count = len(stored) or len(documents)
        noun = "instance" if count == 1 else "instances"
        return f"{count} {noun} stored" + (" with warnings" if reply.status == 202 else "")
