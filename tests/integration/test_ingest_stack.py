"""The DICOM ingest on a real stack: studies sent by dcmtk's storescu and a pynetdicom SCU,
stored, completed by CloseStudy (or a peer's quiet period), analysed once through the
gateway, read back with their documents; re-opened, purged; and kill -9 of the ingest or of
NATS at seeded points mid-association, after which re-sending what was not acknowledged gives
exactly one result of the whole study (``IMAGING_KILL_POINTS`` points, default 20).

The stack's quiet period is long (600 s), so only an explicit close completes a study, except
for the peer ``QUIET_AE``, whose peers-file entry sets 1 s.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
from collections.abc import Iterator, Sequence
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
import pydicom
import pytest
from conftest import DICOM_DIR
from google.protobuf import json_format
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from waiting import wait_until

from services.api.imaging.v1 import gateway_pb2, ingest_pb2
from services.cli.audit_verify import verify
from services.cli.client import GatewayClient, stream_messages
from services.cli.main import PNEUMONIAMNIST
from services.cli.main import main as cli
from services.cli.samples import brain_series, new_instance, pneumoniamnist_samples, to_bytes
from services.cli.stack import Ports, Stack
from services.cli.studies import IngestClient, state_name
from services.common.audit import AuditKey
from services.common.tls_files import TlsFiles

pytestmark = pytest.mark.integration

SCP_AE = "IMAGING"
STORESCU_AE = "STORESCU"
SCU_AE = "PYSCU"
QUIET_AE = "QUIETSCU"
PEERS = f"""
peers:
  - ae_title: {STORESCU_AE}
    addresses: [127.0.0.1]
  - ae_title: {SCU_AE}
    addresses: [127.0.0.1]
  - ae_title: {QUIET_AE}
    addresses: [127.0.0.1]
    quiet_seconds: 1
"""
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
FINAL = frozenset({"done", "refused", "failed", "dead_lettered"})
SLICES = 64
DOSE_SR = UID("1.2.840.10008.5.1.4.1.1.88.67")  # X-Ray Radiation Dose SR Storage
SEGMENTATION = UID("1.2.840.10008.5.1.4.1.1.66.4")
# An Enhanced MR instance (10 frames, MR HEAD) of the shared corpus: its geometry is in the
# per-frame functional groups, not in a top-level ImagePositionPatient.
MULTI_FRAME = "pydicom-data/emri_small.dcm"
# A Philips Enhanced MR instance: 64 frames of one volume, per-frame geometry.
MULTI_FRAME_VOLUME = "dcm_qa_enh/Philips/IM_0027_fMAP.dcm"
KILL_POINTS = int(os.environ.get("IMAGING_KILL_POINTS", "20"))
KILL_TARGETS = ("ingest", "nats-server")
# Seconds: a study's analysis (a 64-slice volume) and the ingest coming back after a kill.
ANALYSIS_SECONDS = 120.0
RESTART_SECONDS = 60.0
ENGINE_TIMEOUT_SECONDS = 2


# --- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The data plane, NATS and the ingest; calling AE titles from the peers file only."""
    if not PNEUMONIAMNIST.is_file():
        pytest.fail(f"{PNEUMONIAMNIST} not found; shared data must sit beside the repo")
    peers = tmp_path_factory.mktemp("dicom-peers") / "peers.yaml"
    peers.write_text(PEERS)
    running = Stack(
        run_dir=tmp_path_factory.mktemp("ingest-stack"),
        ports=Ports.free(),
        ingest=True,
        extra_env={
            "IMAGING_QUIET_SECONDS": "600",
            "IMAGING_DICOM_PEERS_FILE": str(peers),
            # A C-STORE with NATS gone answers 0xA700 after this (default 5 s): the kill points
            # that kill NATS wait for it once each.
            "IMAGING_NATS_TIMEOUT_SECONDS": str(ENGINE_TIMEOUT_SECONDS),
        },
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def ingest(ingest_stack: Stack) -> Iterator[IngestClient]:
    client = IngestClient(ingest_stack.ingest_address, TlsFiles())
    yield client
    client.close()


@pytest.fixture(scope="module")
def gateway(ingest_stack: Stack) -> Iterator[GatewayClient]:
    client = GatewayClient(ingest_stack.gateway_address)
    yield client
    client.close()


# --- sending -----------------------------------------------------------------------------------


def _dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


def _study_uid(data: bytes) -> str:
    return str(_dataset(data).StudyInstanceUID)


def storescu(stack: Stack, path: Path, ae_title: str = STORESCU_AE) -> None:
    """dcmtk's storescu, proposing only the file's SOP class (``-R``), uncompressed."""
    peer = ["-aet", ae_title, "-aec", SCP_AE, "127.0.0.1", str(stack.ports.dimse)]
    sent = subprocess.run(
        ["storescu", "-R", *peer, str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Whether the C-STORE was stored is read from the ingest's record, not storescu's output.
    assert sent.returncode == 0, sent.stdout + sent.stderr


def echoscu(stack: Stack, ae_title: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", ae_title, "-aec", SCP_AE, "127.0.0.1", str(stack.ports.dimse)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def associate(
    stack: Stack, sop_classes: Sequence[str], ae_title: str = SCU_AE
) -> Association | None:
    """A pynetdicom association proposing ``sop_classes`` (and Verification) in explicit and
    implicit VR little endian; None when the ingest does not accept one."""
    ae = AE(ae_title=ae_title)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
    ae.add_requested_context(Verification)
    for sop_class in sorted(set(sop_classes)):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", stack.ports.dimse, ae_title=SCP_AE)
    if not assoc.is_established:
        return None
    # Without it each small PDU waits for the ingest's delayed ACK (tens of ms per instance).
    connection = assoc.dul.socket
    assert connection is not None and connection.socket is not None
    connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def c_store(assoc: Association, data: bytes) -> int | None:
    """The C-STORE's status; None when no answer came (the association is gone)."""
    try:
        reply = assoc.send_c_store(_dataset(data))
    except RuntimeError:  # pynetdicom: the association was aborted before the request
        return None
    return int(reply.Status) if "Status" in reply else None


def send(stack: Stack, instances: Sequence[bytes], ae_title: str = SCU_AE) -> list[int | None]:
    """Every instance over one association; their statuses."""
    assoc = associate(stack, [str(_dataset(d).SOPClassUID) for d in instances], ae_title)
    assert assoc is not None, f"the ingest refused an association from {ae_title}"
    try:
        return [c_store(assoc, data) for data in instances]
    finally:
        assoc.release()


# --- reading back ------------------------------------------------------------------------------


def finished(
    client: IngestClient, study_uid: str, timeout: float = ANALYSIS_SECONDS
) -> ingest_pb2.Study:
    """The study once its state is final (the ingest may be coming back meanwhile)."""

    def final() -> ingest_pb2.Study | None:
        try:
            study = client.show(study_uid)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                return None
            raise
        return study if state_name(study) in FINAL else None

    study = wait_until(final, timeout, f"study {study_uid} reaches a final state")
    assert study is not None
    return study


def closed(client: IngestClient, study_uid: str) -> ingest_pb2.Study:
    client.close_study(study_uid)
    return finished(client, study_uid)


def documents(client: IngestClient, study_uid: str) -> dict[str, list[bytes]]:
    """The stored result's documents by kind ("findings": the stored answer's JSON)."""
    found: dict[str, list[bytes]] = {}
    for document in client.show(study_uid, documents=True).documents:
        found.setdefault(document.kind, []).append(bytes(document.data))
    return found


def stored_answer(client: IngestClient, study_uid: str) -> gateway_pb2.AnalyzeResponse:
    [findings] = documents(client, study_uid)["findings"]
    return json_format.Parse(findings, gateway_pb2.AnalyzeResponse())


def result_dirs(stack: Stack, study_uid: str) -> list[Path]:
    """Stored results of the study: spool/results/<key>/ whose manifest names it (a partial
    result, a hidden folder, is not one)."""
    found = []
    for manifest in sorted((stack.spool_dir / "results").glob("*/manifest.json")):
        if manifest.parent.name.startswith("."):
            continue
        if json.loads(manifest.read_text())["study_uid"] == study_uid:
            found.append(manifest.parent)
    return found


def manifest_of(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "manifest.json").read_text()))


def sop_uids(instances: Sequence[bytes]) -> list[str]:
    return sorted(str(_dataset(d).SOPInstanceUID) for d in instances)


# --- studies -----------------------------------------------------------------------------------


def chest(index: int = 0, study_uid: str = "") -> bytes:
    """A PneumoniaMNIST child's DX chest (``index`` 0 or 1), in a new study unless given."""
    data = pneumoniamnist_samples(PNEUMONIAMNIST)[index][1]
    ds = _dataset(data)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return to_bytes(ds)


def dose_report(study_uid: str) -> bytes:
    """An X-Ray Radiation Dose SR of the study (TID 10001's root): its own series, no pixels."""
    ds = new_instance(DOSE_SR)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID = "PHANTOM^HEAD", "PHANTOM-1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ConceptNameCodeSequence = [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "10001"
    ds.ContentTemplateSequence = [template]
    procedure = Dataset()
    procedure.RelationshipType, procedure.ValueType = "HAS CONCEPT MOD", "CODE"
    procedure.ConceptNameCodeSequence = [_code("121058", "DCM", "Procedure reported")]
    procedure.ConceptCodeSequence = [_code("113704", "DCM", "Projection X-Ray")]
    ds.ContentSequence = [procedure]
    return to_bytes(ds)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def localizer(slice_: bytes) -> bytes:
    """One slice of the series copied into a series of its own, with new UIDs."""
    ds = _dataset(slice_)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesNumber, ds.InstanceNumber = 2, 1
    return to_bytes(ds)


@cache
def _phantom() -> tuple[bytes, ...]:
    return tuple(brain_series())


def kill_series(point: int) -> list[bytes]:
    """The 64-slice phantom with Study/Series/SOP UIDs of its own, the same for every run of
    ``point`` (so points are independent, and a failing one reproducible)."""

    def uid(*parts: object) -> UID:
        return generate_uid(entropy_srcs=["test_ingest_stack", str(point), *map(str, parts)])

    series = []
    for data in _phantom():
        ds = _dataset(data)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
        ds.FrameOfReferenceUID = uid("frame")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("sop", ds.InstanceNumber)
        series.append(to_bytes(ds))
    return series


def kill_plan(point: int) -> tuple[str, int]:
    """Which process dies at ``point``, and after how many acknowledged instances."""
    rng = random.Random(point)
    return rng.choice(KILL_TARGETS), rng.randrange(SLICES)


# --- tests -------------------------------------------------------------------------------------


def test_storescu_chest_matches_a_direct_analysis(
    ingest_stack: Stack, ingest: IngestClient, gateway: GatewayClient, tmp_path: Path
) -> None:
    data = chest()
    path = tmp_path / "chest.dcm"
    path.write_bytes(data)
    study_uid = _study_uid(data)
    storescu(ingest_stack, path)
    receiving = ingest.show(study_uid)
    assert (state_name(receiving), receiving.instances) == ("receiving", 1)
    assert receiving.calling_ae_title == STORESCU_AE
    assert result_dirs(ingest_stack, study_uid) == []

    study = closed(ingest, study_uid)
    assert state_name(study) == "done", study.error
    assert study.pipeline == "cxr_pneumonia"
    assert study.analysed_instances == 1
    [result] = result_dirs(ingest_stack, study_uid)
    assert result.name == study.result_key

    stored = stored_answer(ingest, study_uid)
    direct = gateway.analyze([data], pipeline=study.pipeline)
    assert stored.pipeline == direct.pipeline == "cxr_pneumonia"
    assert [(f.code, f.coding_scheme) for f in stored.findings] == [
        (f.code, f.coding_scheme) for f in direct.findings
    ]
    assert stored.findings, "the chest pipeline reports a finding"
    for kept, fresh in zip(stored.findings, direct.findings, strict=True):
        assert kept.probability == pytest.approx(fresh.probability, abs=1e-6)
        assert kept.positive == fresh.positive

    [sr] = documents(ingest, study_uid)["dicom_sr"]
    report = pydicom.dcmread(BytesIO(sr))
    assert report.StudyInstanceUID == study_uid
    assert report.Modality == "SR"
    assert str(report.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.88.")


def test_echo_from_listed_peer_only(ingest_stack: Stack) -> None:
    listed = echoscu(ingest_stack, STORESCU_AE)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    stranger = echoscu(ingest_stack, "STRANGER")
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr


def test_mr_series_from_pynetdicom_matches_a_streamed_analysis(
    ingest_stack: Stack, ingest: IngestClient, gateway: GatewayClient
) -> None:
    series = brain_series()
    study_uid = _study_uid(series[0])
    assert send(ingest_stack, series) == [SUCCESS] * SLICES

    study = closed(ingest, study_uid)
    assert state_name(study) == "done", study.error
    assert (study.pipeline, study.analysed_instances, study.instances) == (
        "mri_brain_extraction",
        SLICES,
        SLICES,
    )
    found = documents(ingest, study_uid)
    [seg] = found["dicom_seg"]
    segmentation = pydicom.dcmread(BytesIO(seg))
    assert (segmentation.SOPClassUID, segmentation.StudyInstanceUID) == (SEGMENTATION, study_uid)
    [result] = result_dirs(ingest_stack, study_uid)
    assert manifest_of(result)["instances"] == sop_uids(series)

    # As `imaging-platform analyze FOLDER` sends a series, streamed in chunks.
    header = gateway_pb2.AnalyzeHeader(pipeline=study.pipeline)
    direct = gateway.stub.AnalyzeStream(stream_messages(series, header), timeout=120)
    stored = stored_answer(ingest, study_uid)
    assert [(m.code, m.unit) for m in stored.measurements] == [
        (m.code, m.unit) for m in direct.measurements
    ]
    [volume] = stored.measurements
    assert volume.unit == "mL" and volume.value > 0
    assert volume.value == pytest.approx(direct.measurements[0].value, rel=1e-9)


def test_multi_frame_enhanced_mr_gets_the_result_analyze_gives(
    ingest_stack: Stack, ingest: IngestClient, gateway: GatewayClient
) -> None:
    """One Enhanced MR instance holding a 64-frame volume (geometry in its functional groups)."""
    path = DICOM_DIR / MULTI_FRAME_VOLUME
    if not path.is_file():
        pytest.fail(f"{path} not found; shared data must sit beside the repo")
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    storescu(ingest_stack, path)
    study = closed(ingest, study_uid)
    assert state_name(study) == "done", study.error
    assert (study.pipeline, study.analysed_instances) == ("mri_brain_extraction", 1)
    direct = gateway.analyze([path.read_bytes()], pipeline=study.pipeline)
    [stored] = stored_answer(ingest, study_uid).measurements
    [expected] = direct.measurements
    assert (stored.code, stored.unit) == (expected.code, expected.unit) == (stored.code, "mL")
    assert stored.value == pytest.approx(expected.value, rel=1e-9)


def test_multi_frame_enhanced_mr_fails_with_the_gateways_reason(
    ingest_stack: Stack, ingest: IngestClient
) -> None:
    path = DICOM_DIR / MULTI_FRAME
    if not path.is_file():
        pytest.fail(f"{path} not found; shared data must sit beside the repo")
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    storescu(ingest_stack, path)
    study = closed(ingest, study_uid)
    # Routed to the brain pipeline (MR HEAD), whose volume assembly needs per-instance
    # geometry: the gateway answers INVALID_ARGUMENT, a permanent failure for the worker.
    assert state_name(study) == "failed"
    assert study.error.startswith("gateway: INVALID_ARGUMENT: ")
    assert "ImagePositionPatient" in study.error
    assert (study.result_key, study.analysed_instances) == ("", 0)
    assert result_dirs(ingest_stack, study_uid) == []


def test_mixed_study_analyses_the_volume_and_says_why_not_the_rest(
    ingest_stack: Stack, ingest: IngestClient
) -> None:
    series = brain_series()
    study_uid = _study_uid(series[0])
    dose, scout = dose_report(study_uid), localizer(series[0])
    assert send(ingest_stack, [dose, *series, scout]) == [SUCCESS] * (SLICES + 2)

    study = closed(ingest, study_uid)
    assert state_name(study) == "done", study.error
    assert (study.pipeline, study.analysed_instances, study.instances) == (
        "mri_brain_extraction",
        SLICES,
        SLICES + 2,
    )
    skipped = {n.series_instance_uid: n for n in study.not_analysed}
    dose_series = str(_dataset(dose).SeriesInstanceUID)
    scout_series = str(_dataset(scout).SeriesInstanceUID)
    assert set(skipped) == {dose_series, scout_series}
    assert (skipped[dose_series].modality, skipped[dose_series].sop_class_uid) == ("SR", DOSE_SR)
    assert skipped[dose_series].reason == "no pixel data: not an image"
    assert skipped[scout_series].instances == 1
    assert "mri_brain_extraction analyses one series per study" in skipped[scout_series].reason
    [result] = result_dirs(ingest_stack, study_uid)
    manifest = manifest_of(result)
    assert manifest["instances"] == sop_uids(series)
    assert {n["series_instance_uid"] for n in manifest["not_analysed"]} == set(skipped)


def test_instance_after_done_reopens_and_the_same_instances_find_their_result(
    ingest_stack: Stack, ingest: IngestClient
) -> None:
    first = chest(0)
    study_uid = _study_uid(first)
    second = chest(1, study_uid)
    assert send(ingest_stack, [first]) == [SUCCESS]
    done = closed(ingest, study_uid)
    assert (state_name(done), done.generation) == ("done", 1)
    assert [f.name for f in result_dirs(ingest_stack, study_uid)] == [done.result_key]

    # A new instance re-opens the study: a new generation, a second result once closed.
    assert send(ingest_stack, [second]) == [SUCCESS]
    reopened = ingest.show(study_uid)
    assert (state_name(reopened), reopened.generation, reopened.instances) == ("receiving", 2, 2)
    again = closed(ingest, study_uid)
    assert (state_name(again), again.generation, again.analysed_instances) == ("done", 2, 2)
    assert again.result_key not in ("", done.result_key)
    assert {f.name for f in result_dirs(ingest_stack, study_uid)} == {
        done.result_key,
        again.result_key,
    }

    # The second result's SR supersedes the first's: its Predecessor Documents Sequence
    # (PS3.3 C.17.2) names the first SR, so a PACS shows it as the newer version.
    def stored_sr(key: str) -> Dataset:
        folder = ingest_stack.spool_dir / "results" / key
        [name] = [d["file"] for d in manifest_of(folder)["documents"] if d["kind"] == "dicom_sr"]
        return _dataset((folder / name).read_bytes())

    earlier, later = stored_sr(done.result_key), stored_sr(again.result_key)
    assert "PredecessorDocumentsSequence" not in earlier
    [predecessor] = later.PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == earlier.StudyInstanceUID == study_uid
    [series] = predecessor.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == earlier.SeriesInstanceUID
    assert [str(s.ReferencedSOPInstanceUID) for s in series.ReferencedSOPSequence] == [
        str(earlier.SOPInstanceUID)
    ]
    assert later.SOPInstanceUID != earlier.SOPInstanceUID

    # The same instances again (a modality re-sending the study): stored as duplicates and
    # answered success, but nothing an analysis would see changed: the study stays done.
    assert send(ingest_stack, [first, second]) == [SUCCESS, SUCCESS]
    resent = ingest.show(study_uid)
    assert (state_name(resent), resent.generation, resent.instances) == ("done", 2, 2)
    assert list(resent.results) == [done.result_key, again.result_key]
    assert len(result_dirs(ingest_stack, study_uid)) == 2
    # The record lists each result once (purge deletes the ones it lists).
    purged = ingest.purge(study_uid)
    assert (purged.instances_deleted, purged.results_deleted) == (2, 2)
    assert result_dirs(ingest_stack, study_uid) == []


def test_peer_quiet_period_completes_the_study(ingest_stack: Stack, ingest: IngestClient) -> None:
    data = chest()
    study_uid = _study_uid(data)
    assert send(ingest_stack, [data], ae_title=QUIET_AE) == [SUCCESS]
    study = finished(ingest, study_uid, timeout=60)
    assert state_name(study) == "done", study.error
    assert study.completion_reason == f"quiet period: no instance from {QUIET_AE} for 1 s"
    assert study.completed >= study.last_received + 1.0


def test_studies_purge_removes_instances_results_and_the_record(
    ingest_stack: Stack, ingest: IngestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    data = chest()
    study_uid = _study_uid(data)
    assert send(ingest_stack, [data]) == [SUCCESS]
    study = closed(ingest, study_uid)
    assert state_name(study) == "done", study.error
    instances = ingest_stack.spool_dir / "instances" / study_uid
    result = ingest_stack.spool_dir / "results" / study.result_key
    assert instances.is_dir() and result.is_dir()
    capsys.readouterr()

    code = cli(["studies", "--ingest", ingest_stack.ingest_address, "purge", study_uid])
    assert code == 0
    assert capsys.readouterr().out.strip() == "deleted 1 instances and 1 results"
    assert not instances.exists()
    assert not result.exists()
    assert result_dirs(ingest_stack, study_uid) == []
    with pytest.raises(grpc.RpcError) as raised:
        ingest.show(study_uid)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert study_uid not in {s.study_instance_uid for s in ingest.list()}

    # Sent again after the purge: a new study record, nothing of the old one left.
    assert send(ingest_stack, [data]) == [SUCCESS]
    again = ingest.show(study_uid)
    assert (state_name(again), again.generation, again.instances) == ("receiving", 1, 1)
    assert (again.result_key, again.completion_reason) == ("", "")


def _restart(stack: Stack, target: str) -> None:
    if target == "nats-server":
        stack.start_nats()
    else:
        stack.start_ingest()


@pytest.mark.durability
@pytest.mark.parametrize(
    "point",
    range(KILL_POINTS),
    ids=[f"{i}-{target}-after-{k}" for i in range(KILL_POINTS) for target, k in [kill_plan(i)]],
)
def test_kill_at_seeded_point_gives_one_whole_result(
    ingest_stack: Stack, ingest: IngestClient, point: int
) -> None:
    target, k = kill_plan(point)
    series = kill_series(point)
    study_uid = _study_uid(series[0])
    acknowledged: set[int] = set()

    assoc = associate(ingest_stack, [str(_dataset(series[0]).SOPClassUID)])
    assert assoc is not None
    try:
        for index in range(k):
            assert c_store(assoc, series[index]) == SUCCESS, f"instance {index} before the kill"
            acknowledged.add(index)
        ingest_stack.kill(target)  # SIGKILL, the association still open
        # What a modality would do next: one more instance, which must not be acknowledged
        # (NATS gone: 0xA700 once the engine's timeout passes; the ingest gone: no answer).
        after = c_store(assoc, series[k])
        assert after != SUCCESS, f"a C-STORE acknowledged with {target} killed"
        assert after == (OUT_OF_RESOURCES if target == "nats-server" else None)
    finally:
        assoc.abort()
        if target not in ingest_stack.pids:  # restarted even when the point failed above
            _restart(ingest_stack, target)

    # Back: the ingest answers a C-ECHO and stores again (NATS reconnected).
    missing = [i for i in range(SLICES) if i not in acknowledged]

    def stores_again() -> bool:
        probe = associate(ingest_stack, [str(_dataset(series[0]).SOPClassUID)])
        if probe is None:
            return False
        try:
            echoed = probe.send_c_echo()
            if int(echoed.get("Status", -1)) != SUCCESS:
                return False
            return c_store(probe, series[missing[0]]) == SUCCESS
        finally:
            probe.release()

    wait_until(stores_again, RESTART_SECONDS, f"the ingest stores again after {target} restarted")
    assert send(ingest_stack, [series[i] for i in missing[1:]]) == [SUCCESS] * (len(missing) - 1)

    before = ingest.show(study_uid)
    assert (state_name(before), before.instances, before.generation) == ("receiving", SLICES, 1)
    assert result_dirs(ingest_stack, study_uid) == [], "a result before the study was closed"

    study = closed(ingest, study_uid)
    assert state_name(study) == "done", study.error
    assert (study.analysed_instances, study.instances, study.generation) == (SLICES, SLICES, 1)
    [result] = result_dirs(ingest_stack, study_uid)
    assert result.name == study.result_key
    assert manifest_of(result)["instances"] == sop_uids(series)


def test_received_instances_are_audited_and_no_identity_reaches_logs_or_the_trail(
    ingest_stack: Stack, ingest: IngestClient
) -> None:
    """Every C-STORE is a record on the gateway's HMAC-chained trail (its own chain), the
    analysis the worker asked for names the DICOM caller as its origin, and no patient name,
    ID or study UID appears in any log or in the trail."""
    ds = _dataset(chest())
    ds.PatientName = "LEAKY^MARKER"
    ds.PatientID = "LEAKID4711"
    data = to_bytes(ds)
    study_uid = str(ds.StudyInstanceUID)
    assert send(ingest_stack, [data]) == [SUCCESS]
    study = closed(ingest, study_uid)
    assert state_name(study) == "done", study.error

    key = AuditKey.from_file(ingest_stack.audit_key_file)
    records = [json.loads(line) for line in ingest_stack.audit_log.read_text().splitlines()]
    pseudonym = key.pseudonym(study_uid)
    stores = [
        r for r in records if r.get("method") == "C-STORE" and r.get("study_uid_hmac") == pseudonym
    ]
    assert len(stores) == 1
    assert stores[0]["client"] == f"dicom:{SCU_AE}"
    assert stores[0]["chain"].startswith("ingest-")
    assert stores[0]["status"] == "stored"
    analyses = [
        r
        for r in records
        if r.get("method") == "AnalyzeStream" and r.get("study_uid_hmac") == pseudonym
    ]
    assert [(r["origin_ae"], r["origin_address"], r["status"]) for r in analyses] == [
        (SCU_AE, "127.0.0.1", "OK")
    ]
    # Both chains (gateway and ingest) verify with the key; their ends are anchored by the
    # checkpoints each writer logs.
    problems = verify(ingest_stack.audit_log, key)
    assert problems == []

    logs = [ingest_stack.audit_log, *sorted((ingest_stack.run_dir / "logs").glob("*.log"))]
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in ("LEAKY", "MARKER", "LEAKID4711", study_uid):
            assert secret not in text, f"{secret!r} in {path.name}"
