"""The exporter against real peers: a NATS server for the outbox and pynetdicom Storage SCPs
on loopback as destinations (one slow, one that is down until the test starts it, one that
refuses the SOP class). No gateway or Triton: results are stored in the result store as the
worker stores them, and queued with Exporter.enqueue as the worker queues them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from loop_thread import LoopThread
from ports import pick_port
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from waiting import pause, wait_until

from services.cli.natsserver import NatsServer
from services.cli.samples import new_instance, to_bytes
from services.ingest.core import ExportState, StudyRecord, export_key, new_study
from services.ingest.destinations import Destinations
from services.ingest.engine import Engine, Outbox
from services.ingest.exporter import Exporter, drop_export, retry_export
from services.ingest.senders import senders_for
from services.ingest.senders.dicom import Commitments
from services.ingest.spool import ResultStore, Spool

pytestmark = pytest.mark.integration
T = TypeVar("T")


@dataclass
class Peer:
    """A Storage SCP on loopback that records the SOP Instance UIDs it stored, in order."""

    port: int
    accepts: bool = True  # False: the SC SOP class is not supported (a permanent refusal)
    delay: float = 0.0  # seconds each C-STORE takes (a slow destination)
    stored: list[str] = field(default_factory=list)
    server: Any = None

    def start(self) -> None:
        ae = AE(ae_title="PEER")
        ae.add_supported_context(Verification)
        if self.accepts:
            ae.add_supported_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)

        def on_store(event: evt.Event) -> int:
            if self.delay:
                pause(self.delay, "the slow destination takes this long per instance")
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"), port=0, monitoring=0)
    server.start()
    yield server
    server.stop()


@dataclass
class Rig:
    loop: LoopThread
    engine: Engine
    outbox: Outbox
    results: ResultStore
    exporter: Exporter
    task: Any


def rig(nats: NatsServer, tmp_path: Path, destinations: dict[str, Any]) -> Rig:
    loop = LoopThread()
    engine = loop.call(
        Engine.connect(nats.url, f"http://127.0.0.1:{nats.bound['monitoring']}", 5, 30)
    )
    spec = Destinations.model_validate(
        {
            "destinations": destinations,
            "rules": [{"destinations": sorted(destinations), "documents": ["sr"]}],
        }
    )
    results = ResultStore(Spool(tmp_path / "spool"))
    exporter = Exporter(Outbox(engine), results, spec, senders_for(spec, Commitments()), 30)
    task = asyncio.run_coroutine_threadsafe(exporter.run(), loop.loop)
    return Rig(loop, engine, Outbox(engine), results, exporter, task)


def stop(r: Rig) -> None:
    r.task.cancel()
    r.loop.call(r.engine.close())
    r.loop.close()


def dicom(port: int, **changes: Any) -> dict[str, Any]:
    """A DICOM destination without Storage Commitment (the test SCPs do not offer it), with a
    back-off short enough to see retries within the test. JetStream hands out redeliveries
    before new messages, so a back-off shorter than the failing attempts of the queue take
    would starve the newer ones; real back-offs (5 s doubling to 15 min) are far longer."""
    return {
        "type": "dicom",
        "ae_title": "PEER",
        "host": "127.0.0.1",
        "port": port,
        "storage_commitment": False,
        "timeout_seconds": 5,
        "retry": {"backoff_seconds": 1.0, "max_backoff_seconds": 3.0, "max_attempts": 50},
        **changes,
    }


def stored_result(r: Rig, triage: str = "TRIAGE_PRIORITY_ROUTINE") -> tuple[StudyRecord, str]:
    """A result as the worker stores it: the answer, a manifest, one SR-kind document."""
    study = generate_uid()
    ds = new_instance(SecondaryCaptureImageStorage)
    ds.StudyInstanceUID = study
    data = to_bytes(ds)
    key = generate_uid().replace(".", "")[-40:].rjust(40, "0")
    manifest = {
        "study_uid": study,
        "documents": [
            {
                "file": "00-sr.dcm",
                "kind": "dicom_sr",
                "media_type": "application/dicom",
                "sop_class_uid": str(ds.SOPClassUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "name": "sr",
            }
        ],
    }
    answer = {"pipeline": "cxr_pneumonia", "triagePriority": triage}
    r.results.put(
        key,
        {
            "00-sr.dcm": data,
            "manifest.json": json.dumps(manifest).encode(),
            "response.json": json.dumps(answer).encode(),
        },
    )
    return new_study(study, 0.0).model_copy(update={"calling_ae": "CT_1"}), key


def sop_of(r: Rig, key: str) -> str:
    manifest = json.loads(r.results.read(key)["manifest.json"])
    return str(manifest["documents"][0]["sop_instance_uid"])


def state(r: Rig, destination: str, key: str) -> ExportState | None:
    record = r.loop.call(r.outbox.get(export_key(destination, key)))
    return None if record is None else record.state


def test_a_dead_destination_blocks_neither_the_other_nor_other_studies(
    nats: NatsServer, tmp_path: Path
) -> None:
    live, dead = Peer(pick_port()), Peer(pick_port())
    live.start()
    r = rig(nats, tmp_path, {"live": dicom(live.port), "dead": dicom(dead.port)})
    try:
        queued = [stored_result(r) for _ in range(5)]
        for record, key in queued:
            assert r.loop.call(r.exporter.enqueue(record, key)) == 2
        # Queued again (a redelivered analysis job): the same message ids, so each peer still
        # gets each result once (checked below: no SOP instance twice).
        record, key = queued[0]
        r.loop.call(r.exporter.enqueue(record, key))
        sops = [sop_of(r, key) for _, key in queued]
        wait_until(lambda: sorted(live.stored) == sorted(sops), 60, "every result at the live peer")
        wait_until(
            lambda: all(state(r, "dead", key) == ExportState.RETRYING for _, key in queued),
            60,
            "the dead destination's exports retrying with back-off",
        )
        dead_record = r.loop.call(r.outbox.get(export_key("dead", queued[0][1])))
        assert dead_record is not None and dead_record.status == "connection"
        # Back: everything arrives, each once.
        dead.start()
        wait_until(lambda: sorted(dead.stored) == sorted(sops), 60, "every result at the peer back")
        wait_until(
            lambda: all(state(r, "dead", key) == ExportState.DELIVERED for _, key in queued),
            30,
            "every export delivered",
        )
        assert sorted(live.stored) == sorted(sops)
    finally:
        stop(r)
        live.stop()
        dead.stop()


def test_a_refused_sop_class_is_dead_lettered_at_once_and_retried_by_hand(
    nats: NatsServer, tmp_path: Path
) -> None:
    refusing = Peer(pick_port(), accepts=False)
    refusing.start()
    r = rig(nats, tmp_path, {"strict": dicom(refusing.port)})
    try:
        record, key = stored_result(r)
        r.loop.call(r.exporter.enqueue(record, key))
        wait_until(
            lambda: state(r, "strict", key) == ExportState.DEAD_LETTERED, 60, "dead-lettered"
        )
        dead = r.loop.call(r.outbox.get(export_key("strict", key)))
        assert dead is not None
        assert (dead.attempts, dead.status) == (1, "sop-class-not-supported")
        # Fixed (the peer now takes the class): `exports retry` delivers it.
        refusing.stop()
        fixed = Peer(refusing.port)
        fixed.start()
        try:
            again = r.loop.call(retry_export(r.outbox, export_key("strict", key), time.time()))
            assert again is not None and again.state == ExportState.PENDING
            wait_until(lambda: fixed.stored == [sop_of(r, key)], 60, "delivered after the retry")
            wait_until(lambda: state(r, "strict", key) == ExportState.DELIVERED, 30, "delivered")
        finally:
            fixed.stop()
    finally:
        stop(r)
        refusing.stop()


def test_urgent_results_overtake_the_routine_backlog(nats: NatsServer, tmp_path: Path) -> None:
    slow = Peer(pick_port(), delay=0.15)
    slow.start()
    r = rig(nats, tmp_path, {"slow": dicom(slow.port)})
    try:
        routine = [stored_result(r) for _ in range(20)]
        for record, key in routine:
            r.loop.call(r.exporter.enqueue(record, key))
        wait_until(lambda: len(slow.stored) >= 1, 30, "the routine backlog started")
        record, urgent = stored_result(r, "TRIAGE_PRIORITY_URGENT")
        r.loop.call(r.exporter.enqueue(record, urgent))
        wait_until(lambda: sop_of(r, urgent) in slow.stored, 60, "the urgent result delivered")
        position = slow.stored.index(sop_of(r, urgent))
        assert position <= 3, f"urgent delivered after {position} routine results"
        wait_until(lambda: len(slow.stored) == 21, 60, "the backlog delivered too")
    finally:
        stop(r)
        slow.stop()


def test_a_dropped_export_is_not_delivered(nats: NatsServer, tmp_path: Path) -> None:
    down = Peer(pick_port())
    r = rig(nats, tmp_path, {"later": dicom(down.port)})
    try:
        record, key = stored_result(r)
        r.loop.call(r.exporter.enqueue(record, key))
        wait_until(lambda: state(r, "later", key) == ExportState.RETRYING, 30, "retrying")
        dropped = r.loop.call(drop_export(r.outbox, export_key("later", key), time.time()))
        assert dropped is not None and dropped.state == ExportState.DROPPED
        down.start()
        # The next attempt finds it dropped and acknowledges it without sending: the peer
        # stays empty while a second result, queued after, is delivered.
        record2, key2 = stored_result(r)
        r.loop.call(r.exporter.enqueue(record2, key2))
        wait_until(lambda: down.stored == [sop_of(r, key2)], 60, "the second result delivered")
        assert state(r, "later", key) == ExportState.DROPPED
    finally:
        stop(r)
        down.stop()


def test_listings_leave_no_watch_consumers_behind(nats: NatsServer, tmp_path: Path) -> None:
    """Listing studies or exports (the completion pass every second, `studies list`, `exports
    list`) watches the bucket; a stream holds at most 1000 consumers, and nats-py's keys()
    left each for five minutes, so listings failed after 1000 within that time."""
    r = rig(nats, tmp_path, {"any": dicom(pick_port())})
    try:
        for _ in range(60):
            r.loop.call(r.engine.studies())
            r.loop.call(r.outbox.all())

        def consumers() -> int:
            buckets = ("KV_imaging-studies", "KV_imaging-exports")
            infos = [r.loop.call(r.engine.js.stream_info(b)) for b in buckets]
            return sum(i.state.consumer_count for i in infos)

        assert consumers() > 0  # the listings' watchers were real consumers
        wait_until(lambda: consumers() == 0, 20, "the listings' consumers dropped by the server")
    finally:
        stop(r)


def test_the_patient_is_read_from_the_studys_instances_only_when_unambiguous(
    nats: NatsServer, tmp_path: Path
) -> None:
    """For a FHIR destination whose rule allows identity, the exporter names the patient from
    the stored instances at send time (the engine never holds identity): one valid PatientID
    (LO) agreed by every instance, else none and the export is dead-lettered."""
    r = rig(nats, tmp_path, {"any": dicom(pick_port())})
    try:

        def study_with(*patients: tuple[str, str]) -> str:
            study = generate_uid()
            folder = r.results.spool.study_dir(study)
            folder.mkdir(parents=True)
            for patient, issuer in patients:
                ds = new_instance(SecondaryCaptureImageStorage)
                ds.StudyInstanceUID, ds.PatientID = study, patient
                if issuer:
                    ds.IssuerOfPatientID = issuer
                (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
            return study

        one = study_with(("PID-1", "HOSP"), ("PID-1", "HOSP"))
        assert r.exporter._patient(one) == {"patient_id": "PID-1", "patient_issuer": "HOSP"}
        assert r.exporter._patient(study_with(("PID-1", ""))) == {"patient_id": "PID-1"}
        assert r.exporter._patient(study_with(("PID-1", ""), ("PID-2", ""))) == {}
        assert r.exporter._patient(study_with(("A\\B", ""))) == {}  # two values: not one id
        assert r.exporter._patient(generate_uid()) == {}  # instances gone (retention)
    finally:
        stop(r)
