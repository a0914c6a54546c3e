"""What the exporter hands a sender, and the two ways a send can fail.

A sender (services/ingest/senders/: DICOM C-STORE, DICOMweb STOW-RS, FHIR) delivers one
:class:`Delivery` to one destination and returns, or raises :class:`TransientFailure` (try again
later, with back-off) or :class:`PermanentFailure` (dead letter after this attempt). Which
answers of a peer are which is a destination's failure table (destinations.py), applied by the
sender through :meth:`FailureTable.is_permanent`; a sender never retries by itself. Senders are
blocking (pynetdicom and HTTP clients are): the exporter runs them on a thread.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Document:
    """One result document as the result store keeps it (services/ingest/worker.py)."""

    kind: str  # dicom_sr, dicom_seg, dicom_heatmap, fhir
    media_type: str  # application/dicom or application/fhir+json
    data: bytes
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    name: str = ""


def stored_documents(
    files: Mapping[str, bytes], kinds: Collection[str] | None = None
) -> list[Document]:
    """The documents of one stored result (services/ingest/worker.py ``documents`` writes
    them with their manifest), in their stored order; only ``kinds`` when given."""
    manifest = json.loads(files.get("manifest.json", b"{}"))
    return [
        Document(
            kind=entry["kind"],
            media_type=entry["media_type"],
            data=files.get(entry["file"], b""),
            sop_class_uid=entry.get("sop_class_uid", ""),
            sop_instance_uid=entry.get("sop_instance_uid", ""),
            name=entry.get("name", ""),
        )
        for entry in manifest.get("documents", [])
        if kinds is None or entry["kind"] in kinds
    ]


@dataclass(frozen=True)
class Delivery:
    """Everything one destination gets of one result; the same result key gives the same
    documents with the same UIDs and FHIR identifiers, so a re-send is recognised."""

    destination: str
    result_key: str
    study_uid: str
    documents: tuple[Document, ...]
    # Set when this result supersedes an earlier one of the same study (late instances).
    supersedes: str = ""
    attempt: int = 1
    labels: dict[str, str] = field(default_factory=dict)


class DeliveryFailure(Exception):
    """Why a delivery did not happen: said in `exports show`, never quoting document data."""

    def __init__(self, reason: str, status: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # e.g. "0xA700", "HTTP 503", "association rejected"


class TransientFailure(DeliveryFailure):
    """Retry later (timeouts, a peer down, DIMSE 0xA7xx, HTTP 5xx/429, no commitment yet)."""


class PermanentFailure(DeliveryFailure):
    """Dead-letter now: the peer refused what it was sent (SOP class not supported, 0xA9xx,
    0xCxxx, HTTP 4xx)."""


class Sender(Protocol):
    def send(self, delivery: Delivery) -> str:
        """Deliver, returning a one-line receipt (e.g. "3 instances stored, committed")."""
        ...
