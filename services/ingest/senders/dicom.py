"""DICOM C-STORE to a destination, confirmed by Storage Commitment (PS3.4 Annex J).

:class:`DicomSender` opens one association to the destination (our calling AE title is the
destination's ``calling_ae_title``; TLS when it names files), proposes each document's SOP class
in its transfer syntax, sends every DICOM document with C-STORE and, when the destination asks
for it, an N-ACTION Storage Commitment Request naming every stored instance. The peer answers
with an N-EVENT-REPORT, usually on a new association it opens to our SCP
(services/ingest/dimse.py hands it to :class:`Commitments`), sometimes on the same one (handled
here too). The send counts as done only once every instance is reported committed.

Each failure is named as the destination's failure table knows it (``connection``,
``timeout``, ``association-rejected-transient``/``-permanent``, ``sop-class-not-supported``,
``dimse:0xA700``, ``unconfirmed``): the table decides whether it is retried
(:class:`TransientFailure`) or dead-lettered (:class:`PermanentFailure`); that name is the
failure's ``status``. Nothing here retries, and no reason quotes a UID or other value of a
document.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association

from services.ingest.delivery import (
    Delivery,
    Document,
    PermanentFailure,
    TransientFailure,
)
from services.ingest.destinations import DicomDestination

log = logging.getLogger("imaging.ingest.senders.dicom")

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance
REQUEST_STORAGE_COMMITMENT = 1  # N-ACTION Action Type ID
ALL_COMMITTED = 1  # N-EVENT-REPORT Event Type IDs
FAILURES_EXIST = 2
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
# Failure Reasons (PS3.3 C.14.1.1) that re-sending cannot cure.
WRONG_CLASS_REASONS = {0x0119, 0x0122}  # class-instance conflict, SOP class not supported
# Namespace of the transaction UIDs: one per (result key, attempt), the same on a re-run.
_TRANSACTIONS = uuid.UUID("5b0e4c1e-6a41-4c55-9d59-0d8f3f0e2a11")


def transaction_uid(result_key: str, attempt: int) -> str:
    """The Storage Commitment Transaction UID of one attempt of one delivery (2.25 form)."""
    return f"2.25.{uuid.uuid5(_TRANSACTIONS, f'{result_key}#{attempt}').int}"


# -- the registry the SCP reports to ----------------------------------------------------------


@dataclass(frozen=True)
class CommitmentReport:
    """What a peer reported of one transaction: instances committed, and those it failed with
    their Failure Reason (PS3.3 C.14.1.1, e.g. 0x0110 processing failure)."""

    committed: frozenset[str]
    failed: tuple[tuple[str, int], ...]


@dataclass
class Waiter:
    """One expected report (from :meth:`Commitments.expect`)."""

    transaction_uid: str
    _done: threading.Event = field(default_factory=threading.Event)
    report: CommitmentReport | None = None


class Commitments:
    """Storage Commitment transactions under way, shared by the senders (which expect and wait)
    and the receiver's SCP (which reports what peers send back). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, Waiter] = {}

    def expect(self, transaction_uid: str) -> Waiter:
        """Register a transaction before its N-ACTION goes out (so no report is missed)."""
        waiter = Waiter(transaction_uid)
        with self._lock:
            self._waiting[transaction_uid] = waiter
        return waiter

    def report(
        self,
        transaction_uid: str,
        committed_uids: Iterable[str],
        failed: Iterable[tuple[str, int]],
    ) -> bool:
        """A peer's report; False when no sender waits for that transaction (unknown, or
        given up on: a late report of an attempt that already timed out)."""
        with self._lock:
            waiter = self._waiting.pop(transaction_uid, None)
        if waiter is None:
            return False
        waiter.report = CommitmentReport(frozenset(committed_uids), tuple(failed))
        waiter._done.set()
        return True

    def wait(self, waiter: Waiter, timeout: float) -> CommitmentReport | None:
        """The report, or None after ``timeout`` seconds (the transaction is then forgotten)."""
        waiter._done.wait(timeout)
        with self._lock:
            self._waiting.pop(waiter.transaction_uid, None)
        return waiter.report

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting)


def parse_report(info: Dataset) -> tuple[str, list[str], list[tuple[str, int]]]:
    """(Transaction UID, committed SOP instance UIDs, [(failed UID, Failure Reason)]) of an
    N-EVENT-REPORT's Event Information (PS3.4 J.3.3.1)."""
    transaction = str(info.get("TransactionUID", "") or "")
    committed = [
        str(item.get("ReferencedSOPInstanceUID", "") or "")
        for item in info.get("ReferencedSOPSequence", None) or []
    ]
    failed = [
        (
            str(item.get("ReferencedSOPInstanceUID", "") or ""),
            int(item.get("FailureReason", 0x0110) or 0x0110),
        )
        for item in info.get("FailedSOPSequence", None) or []
    ]
    return transaction, committed, failed


# -- the sender --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instance:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: Dataset


def _read(document: Document) -> _Instance:
    try:
        ds = pydicom.dcmread(io.BytesIO(document.data))
        meta = ds.file_meta
        sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
        sop_instance = str(
            ds.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", "")
        )
        syntax = str(meta.TransferSyntaxUID)
    except Exception as err:  # pydicom raises many kinds on bad bytes
        raise PermanentFailure(
            f"document {document.name or document.kind} is not a DICOM Part 10 file "
            f"({type(err).__name__})",
            "unreadable",
        ) from err
    if not sop_class or not sop_instance:
        raise PermanentFailure(
            f"document {document.name or document.kind} has no SOP class or instance UID",
            "unreadable",
        )
    return _Instance(sop_class, sop_instance, syntax, ds)


class DicomSender:
    """Delivers to one DICOM destination; ``commitments`` is the registry the receiver's SCP
    reports to (the same object given to :class:`~services.ingest.dimse.Receiver`)."""

    def __init__(self, destination: DicomDestination, commitments: Commitments) -> None:
        self.destination = destination
        self.commitments = commitments

    # -- failures ---------------------------------------------------------------------------

    def _fail(self, failure: str, reason: str) -> TransientFailure | PermanentFailure:
        if self.destination.failures.is_permanent(failure):
            return PermanentFailure(reason, failure)
        return TransientFailure(reason, failure)

    def _peer(self) -> str:
        d = self.destination
        return f"{d.ae_title} at {d.host}:{d.port}"

    # -- association ------------------------------------------------------------------------

    def _tls(self) -> tuple[ssl.SSLContext, str] | None:
        files = self.destination.tls
        if files is None:
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file) if files.ca_file else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if files.cert_file is not None and files.key_file is not None:
            context.load_cert_chain(str(files.cert_file), str(files.key_file))
        return context, self.destination.host

    def _associate(self, instances: list[_Instance], reports: list[Dataset]) -> Association:
        d = self.destination
        ae = AE(ae_title=d.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = d.timeout_seconds
        ae.connection_timeout = d.timeout_seconds
        pairs: dict[tuple[str, str], None] = {}
        for instance in instances:
            pairs[(instance.sop_class_uid, instance.transfer_syntax)] = None
        for sop_class, syntax in pairs:
            # An uncompressed dataset can go in any uncompressed syntax (pynetdicom converts).
            syntaxes = [syntax] + (
                [s for s in UNCOMPRESSED if s != syntax] if syntax in UNCOMPRESSED else []
            )
            ae.add_requested_context(sop_class, syntaxes)
        if d.storage_commitment:
            ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, list(UNCOMPRESSED[:2]))
        opened = threading.Event()

        def on_open(event: evt.Event) -> None:
            opened.set()

        def on_report(event: evt.Event) -> tuple[int, None]:
            # A report on this association (the peer may send it before releasing).
            reports.append(event.event_information)
            transaction, committed, failed = parse_report(event.event_information)
            self.commitments.report(transaction, committed, failed)
            return 0x0000, None

        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, on_open),
            (evt.EVT_N_EVENT_REPORT, on_report),
        ]
        try:
            tls = self._tls()
        except (OSError, ssl.SSLError) as err:
            raise self._fail(
                "tls", f"cannot load the TLS files for {self._peer()}: {type(err).__name__}"
            ) from err
        try:
            assoc = ae.associate(
                d.host, d.port, ae_title=d.ae_title, tls_args=tls, evt_handlers=handlers
            )
        except (OSError, ssl.SSLError) as err:
            raise self._fail(
                "connection", f"cannot connect to {self._peer()}: {type(err).__name__}"
            ) from err
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            result = getattr(assoc.acceptor.primitive, "result", None)
            source = getattr(assoc.acceptor.primitive, "result_source", None)
            diagnostic = getattr(assoc.acceptor.primitive, "diagnostic", None)
            kind = "permanent" if result == 0x01 else "transient"
            raise self._fail(
                f"association-rejected-{kind}",
                f"{self._peer()} rejected the association ({kind}, source {source}, "
                f"reason {diagnostic})",
            )
        if not opened.is_set():
            raise self._fail("connection", f"cannot connect to {self._peer()}")
        answer = assoc.acceptor.primitive
        if answer is not None and getattr(answer, "result", None) == 0x00:
            # Accepted, but with none of the proposed presentation contexts: pynetdicom then
            # aborts. The peer does not take these SOP classes (PS3.8 9.3.3.2).
            raise self._fail(
                "sop-class-not-supported",
                f"{self._peer()} accepts none of the SOP classes sent "
                f"({', '.join(sorted({i.sop_class_uid for i in instances}))})",
            )
        raise self._fail(
            "timeout", f"{self._peer()} aborted the association or did not answer in time"
        )

    # -- send -------------------------------------------------------------------------------

    def send(self, delivery: Delivery) -> str:
        instances = [_read(doc) for doc in delivery.documents if doc.kind != "fhir"]
        if not instances:
            return "no DICOM documents to send"
        reports: list[Dataset] = []
        assoc = self._associate(instances, reports)
        try:
            warnings = self._store(assoc, instances)
            if not self.destination.storage_commitment:
                return _receipt(len(instances), warnings, "")
            self._commit(assoc, delivery, instances)
            return _receipt(len(instances), warnings, "committed")
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()

    def _store(self, assoc: Association, instances: list[_Instance]) -> int:
        accepted = {(str(cx.abstract_syntax)) for cx in assoc.accepted_contexts}
        refused = sorted({i.sop_class_uid for i in instances if i.sop_class_uid not in accepted})
        if refused:
            raise self._fail(
                "sop-class-not-supported",
                f"{self._peer()} accepts no presentation context for SOP class "
                f"{', '.join(refused)}",
            )
        if self.destination.storage_commitment and STORAGE_COMMITMENT_PUSH_MODEL not in accepted:
            raise self._fail(
                "sop-class-not-supported",
                f"{self._peer()} does not accept Storage Commitment Push Model",
            )
        warnings = 0
        for number, instance in enumerate(instances, start=1):
            try:
                answer = assoc.send_c_store(instance.dataset, msg_id=number)
            except ValueError as err:  # no accepted context fits its transfer syntax
                raise self._fail(
                    "sop-class-not-supported",
                    f"{self._peer()} accepted no context for instance {number} of "
                    f"{len(instances)} in transfer syntax {instance.transfer_syntax}: {err}",
                ) from err
            if "Status" not in answer:
                raise self._fail(
                    "timeout",
                    f"no C-STORE answer from {self._peer()} for instance {number} of "
                    f"{len(instances)} (aborted or timed out)",
                )
            status = int(answer.Status)
            if status == 0x0000:
                continue
            if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
                warnings += 1
                continue
            comment = str(answer.get("ErrorComment", "") or "").strip()
            raise self._fail(
                f"dimse:0x{status:04X}",
                f"{self._peer()} answered C-STORE 0x{status:04X} for instance {number} of "
                f"{len(instances)}" + (f": {comment}" if comment else ""),
            )
        return warnings

    def _commit(self, assoc: Association, delivery: Delivery, instances: list[_Instance]) -> None:
        d = self.destination
        transaction = transaction_uid(delivery.result_key, delivery.attempt)
        request = Dataset()
        request.TransactionUID = transaction
        referenced = []
        for instance in instances:
            item = Dataset()
            item.ReferencedSOPClassUID = instance.sop_class_uid
            item.ReferencedSOPInstanceUID = instance.sop_instance_uid
            referenced.append(item)
        request.ReferencedSOPSequence = referenced
        waiter = self.commitments.expect(transaction)
        try:
            status, _ = assoc.send_n_action(
                request,
                REQUEST_STORAGE_COMMITMENT,
                STORAGE_COMMITMENT_PUSH_MODEL,
                STORAGE_COMMITMENT_INSTANCE,
            )
        except Exception:
            self.commitments.wait(waiter, 0)  # forget it
            raise
        if "Status" not in status:
            # Stored, but not confirmed: e.g. Orthanc aborts the association when the caller
            # is not one of its DicomModalities (it could not report back to it anyway).
            self.commitments.wait(waiter, 0)
            raise self._fail(
                "unconfirmed",
                f"{self._peer()} stored {len(instances)} instance(s) but aborted or did not "
                f"answer the Storage Commitment request (does it know our AE title "
                f"{d.calling_ae_title}?)",
            )
        code = int(status.Status)
        if code != 0x0000:
            self.commitments.wait(waiter, 0)
            raise self._fail(
                f"dimse:0x{code:04X}",
                f"{self._peer()} answered the Storage Commitment request with 0x{code:04X}",
            )
        # The association stays open meanwhile: a peer may report on it before releasing.
        report = self.commitments.wait(waiter, d.commitment_timeout_seconds)
        if report is None:
            raise self._fail(
                "unconfirmed",
                f"{self._peer()} stored {len(instances)} instance(s) but reported no storage "
                f"commitment within {d.commitment_timeout_seconds:g} s (does it know our AE "
                f"title {d.calling_ae_title} and address?)",
            )
        self._check(report, instances)

    def _check(self, report: CommitmentReport, instances: list[_Instance]) -> None:
        failed = dict(report.failed)
        missing = [
            i
            for i in instances
            if i.sop_instance_uid not in report.committed and i.sop_instance_uid not in failed
        ]
        if not failed and not missing:
            return
        failures = [
            "sop-class-not-supported" if reason in WRONG_CLASS_REASONS else f"dimse:0x{reason:04X}"
            for reason in failed.values()
        ]
        permanent = [f for f in failures if self.destination.failures.is_permanent(f)]
        reasons = ", ".join(f"0x{r:04X}" for r in sorted(set(failed.values())))
        said = f"{len(failed)} of {len(instances)} instance(s) not committed" + (
            f" (failure reason {reasons})" if reasons else ""
        )
        if missing:
            said += f"; {len(missing)} missing from the report"
        if permanent:
            raise PermanentFailure(f"{self._peer()}: {said}", permanent[0])
        raise TransientFailure(
            f"{self._peer()}: {said}", failures[0] if failures else "unconfirmed"
        )


def _receipt(count: int, warnings: int, committed: str) -> str:
    said = f"{count} instance{'s' if count != 1 else ''} stored"
    if warnings:
        said += f" ({warnings} with a warning)"
    return f"{said}, {committed}" if committed else said
