"""Results exported by C-STORE with Storage Commitment, to a real Orthanc.

The sender (services/ingest/senders/dicom.py) stores into Orthanc and asks it to commit; Orthanc
opens an association back to the ingest's SCP (services/ingest/dimse.py, wired as
services/ingest/server.py wires it: a real NATS server behind it) to send its N-EVENT-REPORT,
which the receiver hands to the sender through :class:`Commitments`. Orthanc calls back only
the AE titles in its ``DicomModalities``: ``IMAGING`` is there (our SCP's port), ``DEADEND``
is there with a port nobody listens on, ``STRANGER`` is not.

A second peer, a pynetdicom SCP, reports what Orthanc never does: failures, and a report on
the association of the request itself.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pytest
from loop_thread import LoopThread
from orthanc import Orthanc, running_orthanc
from ports import refused_port
from pydicom.dataset import Dataset
from pydicom.uid import UID, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from waiting import wait_until

from services.cli.natsserver import NatsServer
from services.cli.samples import new_instance, to_bytes
from services.common.tls_files import PLAINTEXT
from services.ingest.delivery import Delivery, Document, PermanentFailure, TransientFailure
from services.ingest.destinations import DicomDestination
from services.ingest.dimse import HandshakeServer, Receiver, start_scp
from services.ingest.engine import Engine
from services.ingest.peers import Peers
from services.ingest.senders.dicom import (
    STORAGE_COMMITMENT_INSTANCE,
    Commitments,
    DicomSender,
    parse_report,
    transaction_uid,
)
from services.ingest.spool import Spool

pytestmark = pytest.mark.integration

T = TypeVar("T")
OUR_TITLE = "IMAGING"  # the SCP's AE title, and the senders' calling AE title towards Orthanc
COMMIT_SECONDS = 20.0  # Orthanc reports within a second or two; this is the ceiling
UNCONFIRMED_SECONDS = 3.0  # how long a test that expects no report waits for one
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.1.99.1"


# -- wiring: the ingest's SCP, as in test_ingest_receiver.py ------------------------------------


@pytest.fixture(scope="module")
def commitments() -> Commitments:
    return Commitments()


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory, commitments: Commitments) -> Iterator[int]:
    """The ingest's SCP (loopback callers admitted, no peers file); its port."""
    before = tempfile.tempdir
    nats = NatsServer(tmp_path_factory.mktemp("nats"), 0, 0)
    nats.start()
    loop = LoopThread()
    monitoring = f"http://127.0.0.1:{nats.bound['monitoring']}"
    engine = loop.call(Engine.connect(nats.url, monitoring, 2.0, 60.0))
    spool = Spool(tmp_path_factory.mktemp("spool"))
    receiver = Receiver(
        spool,
        Peers.load(None),
        loop.receiver_run(10.0),
        engine.change,
        lambda received: None,
        30.0,
        1.0,
        commitments=commitments,
    )
    server: HandshakeServer = start_scp(
        receiver, spool, "127.0.0.1", 0, OUR_TITLE, 8, 30.0, PLAINTEXT, 10.0
    )
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        loop.call(engine.close())
        loop.close()
        nats.kill()
        tempfile.tempdir = before


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, scp: int) -> Iterator[Orthanc]:
    with refused_port() as dead:
        modalities = {
            OUR_TITLE: [OUR_TITLE, "127.0.0.1", scp],
            "DEADEND": ["DEADEND", "127.0.0.1", dead],
        }
        with running_orthanc(
            tmp_path_factory.mktemp("orthanc"),
            aet="ORTHANC_EXPORT",
            modalities=modalities,
            settings={"DicomCheckCalledAet": True, "DicomScuTimeout": 5},
        ) as server:
            yield server


def destination(orthanc: Orthanc, **overrides: Any) -> DicomDestination:
    fields: dict[str, Any] = {
        "type": "dicom",
        "ae_title": orthanc.aet,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "calling_ae_title": OUR_TITLE,
        "commitment_timeout_seconds": COMMIT_SECONDS,
        "timeout_seconds": 10.0,
    }
    return DicomDestination.model_validate(fields | overrides)


# -- documents -----------------------------------------------------------------------------


def secondary_capture(study: str, sop_class: str = SecondaryCaptureImageStorage) -> Dataset:
    ds = new_instance(UID(sop_class))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientName, ds.PatientID = "EXPORT^TEST", "EXPORT-1"
    ds.Modality, ds.ConversionType, ds.InstanceNumber = "OT", "WSD", 1
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(16))
    return ds


def report_sr(dicom_dir: Path, study: str) -> Dataset:
    """A real Basic Text SR from the corpus, moved into ``study`` with fresh UIDs."""
    ds = pydicom.dcmread(dicom_dir / "pydicom-testfiles" / "reportsi.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def document(ds: Dataset, kind: str = "dicom_sr") -> Document:
    return Document(
        kind=kind,
        media_type="application/dicom",
        data=to_bytes(ds),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        name=f"{kind}.dcm",
    )


def delivery(*datasets: Dataset, attempt: int = 1, fhir: bool = False) -> Delivery:
    documents = [
        document(ds, "dicom_heatmap" if i else "dicom_sr") for i, ds in enumerate(datasets)
    ]
    if fhir:
        documents.append(Document("fhir", "application/fhir+json", b"{}", name="report.json"))
    study = str(datasets[0].StudyInstanceUID)
    return Delivery(
        destination="pacs",
        result_key=f"result-{study}",
        study_uid=study,
        documents=tuple(documents),
        attempt=attempt,
    )


def lookup(orthanc: Orthanc, sop_instance_uid: str) -> int:
    """How many instances of that SOP instance UID Orthanc holds."""
    request = urllib.request.Request(
        f"{orthanc.url}/tools/lookup", data=sop_instance_uid.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        found = json.loads(reply.read())
    return sum(1 for item in found if item.get("Type") == "Instance")


# -- Orthanc -------------------------------------------------------------------------------


def test_stores_and_is_committed(
    orthanc: Orthanc, commitments: Commitments, dicom_dir: Path
) -> None:
    study = generate_uid()
    sr, sc = report_sr(dicom_dir, study), secondary_capture(study)
    sender = DicomSender(destination(orthanc), commitments)
    started = time.monotonic()
    receipt = sender.send(delivery(sr, sc, fhir=True))
    assert receipt == "2 instances stored, committed"
    assert time.monotonic() - started < COMMIT_SECONDS
    assert lookup(orthanc, str(sr.SOPInstanceUID)) == 1
    assert lookup(orthanc, str(sc.SOPInstanceUID)) == 1
    assert commitments.pending() == 0
    total = int(orthanc.get("/statistics")["CountInstances"])

    # The same result again (the exporter's retry after a lost answer): nothing new is kept.
    again = sender.send(delivery(sr, sc, attempt=2))
    assert again == "2 instances stored, committed"
    assert int(orthanc.get("/statistics")["CountInstances"]) == total
    assert lookup(orthanc, str(sr.SOPInstanceUID)) == 1


def test_without_storage_commitment_nothing_is_awaited(
    orthanc: Orthanc, commitments: Commitments
) -> None:
    # STRANGER is unknown to Orthanc, so a commitment would never be reported: not asked.
    sc = secondary_capture(generate_uid())
    target = destination(orthanc, storage_commitment=False, calling_ae_title="STRANGER")
    started = time.monotonic()
    assert DicomSender(target, commitments).send(delivery(sc)) == "1 instance stored"
    assert time.monotonic() - started < UNCONFIRMED_SECONDS
    assert lookup(orthanc, str(sc.SOPInstanceUID)) == 1


def test_a_peer_that_does_not_know_us_leaves_it_unconfirmed(
    orthanc: Orthanc, commitments: Commitments
) -> None:
    sc = secondary_capture(generate_uid())
    target = destination(
        orthanc, calling_ae_title="STRANGER", commitment_timeout_seconds=UNCONFIRMED_SECONDS
    )
    with pytest.raises(TransientFailure) as failure:
        DicomSender(target, commitments).send(delivery(sc))
    assert failure.value.status == "unconfirmed", failure.value.reason
    assert "STRANGER" in failure.value.reason
    assert commitments.pending() == 0


def test_a_report_that_cannot_reach_us_leaves_it_unconfirmed(
    orthanc: Orthanc, commitments: Commitments
) -> None:
    sc = secondary_capture(generate_uid())
    target = destination(
        orthanc, calling_ae_title="DEADEND", commitment_timeout_seconds=UNCONFIRMED_SECONDS
    )
    with pytest.raises(TransientFailure) as failure:
        DicomSender(target, commitments).send(delivery(sc))
    assert failure.value.status == "unconfirmed"
    assert lookup(orthanc, str(sc.SOPInstanceUID)) == 1  # stored, only not confirmed


def test_nobody_listening_is_a_transient_connection_failure(
    orthanc: Orthanc, commitments: Commitments
) -> None:
    with refused_port() as port:
        target = destination(orthanc, port=port)
        with pytest.raises(TransientFailure) as failure:
            DicomSender(target, commitments).send(delivery(secondary_capture(generate_uid())))
    assert failure.value.status == "connection"


def test_a_wrong_called_ae_title_is_rejected_permanently(
    orthanc: Orthanc, commitments: Commitments
) -> None:
    target = destination(orthanc, ae_title="NOT_ORTHANC")
    with pytest.raises(PermanentFailure) as failure:
        DicomSender(target, commitments).send(delivery(secondary_capture(generate_uid())))
    assert failure.value.status == "association-rejected-permanent"


def test_a_sop_class_the_peer_does_not_take_is_permanent(
    orthanc: Orthanc, commitments: Commitments
) -> None:
    private = secondary_capture(generate_uid(), PRIVATE_SOP_CLASS)
    with pytest.raises(PermanentFailure) as failure:
        DicomSender(destination(orthanc), commitments).send(delivery(private))
    assert failure.value.status == "sop-class-not-supported"
    assert PRIVATE_SOP_CLASS in failure.value.reason
    assert lookup(orthanc, str(private.SOPInstanceUID)) == 0


def test_transaction_uids_are_deterministic_uids() -> None:
    first = transaction_uid("result-1", 1)
    assert first == transaction_uid("result-1", 1)
    assert first != transaction_uid("result-1", 2)
    assert first.startswith("2.25.") and len(first) <= 64


# -- a pynetdicom peer: failures, and a report on the request's own association -----------------


class FakePacs:
    """Takes C-STOREs and Storage Commitment requests; reports each request as ``failures``
    says (SOP instance UID -> Failure Reason; the others committed), on a new association to
    our SCP (as Orthanc does) or, with ``same_association``, on the request's own."""

    def __init__(self, scp_port: int) -> None:
        self.scp_port = scp_port
        self.failures: dict[str, int] = {}
        self.same_association = False
        self.requests: list[Dataset] = []
        self.reported: list[int] = []  # the statuses our side answered
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(SecondaryCaptureImageStorage)
        ae.add_supported_context(StorageCommitmentPushModel)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, lambda event: 0x0000),
            (evt.EVT_N_ACTION, self._on_action),
            (evt.EVT_DIMSE_SENT, self._on_sent),
        ]
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        assert server is not None
        self.server = server
        self.port = int(self.server.server_address[1])

    def _on_action(self, event: evt.Event) -> tuple[int, None]:
        self.requests.append(event.action_information)
        return 0x0000, None

    def _on_sent(self, event: evt.Event) -> None:
        # Once the N-ACTION response is out, report (from another thread: this is the
        # association's own).
        if type(event.message).__name__ != "N_ACTION_RSP":
            return
        target = self._report_here if self.same_association else self._report_back
        threading.Thread(target=target, args=(event.assoc,), daemon=True).start()

    def _event(self) -> tuple[Dataset, int]:
        request = self.requests[-1]
        info = Dataset()
        info.TransactionUID = request.TransactionUID
        committed, failed = [], []
        for item in request.ReferencedSOPSequence:
            reason = self.failures.get(str(item.ReferencedSOPInstanceUID))
            entry = Dataset()
            entry.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            entry.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if reason is None:
                committed.append(entry)
            else:
                entry.FailureReason = reason
                failed.append(entry)
        if committed:
            info.ReferencedSOPSequence = committed
        if failed:
            info.FailedSOPSequence = failed
        return info, 2 if failed else 1

    def _report_back(self, _: Any) -> None:
        info, event_type = self._event()
        ae = AE(ae_title="FAKEPACS")
        ae.add_requested_context(StorageCommitmentPushModel)
        roles: list[Any] = [build_role(StorageCommitmentPushModel, scp_role=True)]
        assoc = ae.associate("127.0.0.1", self.scp_port, ae_title=OUR_TITLE, ext_neg=roles)
        if assoc.is_established:
            status, _ = assoc.send_n_event_report(
                info, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE
            )
            self.reported.append(int(status.get("Status", -1)))
            assoc.release()

    def _report_here(self, assoc: Any) -> None:
        info, event_type = self._event()
        # pynetdicom's acceptor serves requests on a reactor that must be paused while
        # another thread sends on its association (as its own handlers are).
        assoc._reactor_checkpoint.clear()
        wait_until(lambda: assoc._is_paused, 10, "the acceptor's reactor did not pause")
        try:
            status, _ = assoc.send_n_event_report(
                info, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE
            )
            self.reported.append(int(status.get("Status", -1)))
        finally:
            assoc._reactor_checkpoint.set()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def fake_pacs(scp: int) -> Iterator[FakePacs]:
    peer = FakePacs(scp)
    yield peer
    peer.close()


def to_fake(peer: FakePacs, **overrides: Any) -> DicomDestination:
    fields: dict[str, Any] = {
        "type": "dicom",
        "ae_title": "FAKEPACS",
        "host": "127.0.0.1",
        "port": peer.port,
        "calling_ae_title": OUR_TITLE,
        "commitment_timeout_seconds": COMMIT_SECONDS,
        "timeout_seconds": 10.0,
    }
    return DicomDestination.model_validate(fields | overrides)


def test_a_report_on_a_new_association_confirms(
    fake_pacs: FakePacs, commitments: Commitments
) -> None:
    study = generate_uid()
    first, second = secondary_capture(study), secondary_capture(study)
    receipt = DicomSender(to_fake(fake_pacs), commitments).send(delivery(first, second))
    assert receipt == "2 instances stored, committed"
    assert fake_pacs.reported == [0x0000]
    (request,) = fake_pacs.requests
    assert request.TransactionUID == transaction_uid(f"result-{study}", 1)
    assert [str(i.ReferencedSOPInstanceUID) for i in request.ReferencedSOPSequence] == [
        str(first.SOPInstanceUID),
        str(second.SOPInstanceUID),
    ]


def test_a_report_on_the_same_association_confirms(
    fake_pacs: FakePacs, commitments: Commitments
) -> None:
    fake_pacs.same_association = True
    receipt = DicomSender(to_fake(fake_pacs), commitments).send(
        delivery(secondary_capture(generate_uid()))
    )
    assert receipt == "1 instance stored, committed"
    assert fake_pacs.reported == [0x0000]


@pytest.mark.parametrize(
    ("reason", "failure"),
    [(0x0110, TransientFailure), (0x0122, PermanentFailure), (0x0119, PermanentFailure)],
)
def test_failures_reported_are_classified_by_reason(
    fake_pacs: FakePacs, commitments: Commitments, reason: int, failure: type[Exception]
) -> None:
    study = generate_uid()
    good, bad = secondary_capture(study), secondary_capture(study)
    fake_pacs.failures = {str(bad.SOPInstanceUID): reason}
    with pytest.raises(failure) as raised:
        DicomSender(to_fake(fake_pacs), commitments).send(delivery(good, bad))
    assert f"0x{reason:04X}" in str(raised.value)
    assert "1 of 2" in str(raised.value)
    assert fake_pacs.reported == [0x0000]


def test_a_report_nobody_waits_for_is_still_acknowledged(
    fake_pacs: FakePacs, commitments: Commitments
) -> None:
    fake_pacs.requests.append(Dataset())
    fake_pacs.requests[-1].TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = SecondaryCaptureImageStorage
    item.ReferencedSOPInstanceUID = generate_uid()
    fake_pacs.requests[-1].ReferencedSOPSequence = [item]
    fake_pacs._report_back(None)
    assert fake_pacs.reported == [0x0000]


def test_parse_report_reads_both_sequences() -> None:
    info = Dataset()
    info.TransactionUID = "2.25.1"
    ok, bad = Dataset(), Dataset()
    ok.ReferencedSOPInstanceUID, bad.ReferencedSOPInstanceUID = "1.2.3", "1.2.4"
    bad.FailureReason = 0x0122
    info.ReferencedSOPSequence, info.FailedSOPSequence = [ok], [bad]
    assert parse_report(info) == ("2.25.1", ["1.2.3"], [("1.2.4", 0x0122)])
