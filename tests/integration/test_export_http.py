"""The HTTP senders (services/ingest/senders/): the gateway's own documents of one result go to a
FHIR server as a conditional transaction (the stand-in of fhir_standin.py: no FHIR server is
packaged here) and to a real Orthanc over STOW-RS; a re-send adds nothing, a superseding result
amends the same DiagnosticReport, and each way a send fails is transient or permanent as the
destination's failure table says."""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fhir_standin import FhirStandIn, running_fhir_standin
from orthanc import Orthanc, running_orthanc
from PIL import Image
from ports import refused_port
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from services.cli.pki import create_dev_pki
from services.cli.samples import new_instance, pediatric_chest, to_bytes
from services.common.results import (
    Assessment,
    CodedConcept,
    Finding,
    ModelRef,
    OutputOptions,
    StudyResult,
    TriagePriority,
)
from services.gateway.reports import build_outputs
from services.ingest.delivery import (
    Delivery,
    Document,
    PermanentFailure,
    TransientFailure,
)
from services.ingest.destinations import DicomWebDestination, FhirDestination, HttpAuth
from services.ingest.senders.dicomweb import DicomWebSender
from services.ingest.senders.fhir import SYSTEM, FhirSender, report_identifier

pytestmark = pytest.mark.integration
PNEUMONIA = CodedConcept(code="233604007", coding_scheme="SCT", display_name="Pneumonia")
EFFUSION = CodedConcept(code="60046008", coding_scheme="SCT", display_name="Pleural effusion")
FIRST, SECOND = "a1" * 20, "b2" * 20  # result keys (the gateway's uid_seed)


def _overlay(rows: int, cols: int) -> bytes:
    rgba = np.zeros((rows, cols, 4), np.uint8)
    rgba[20:, :8] = (255, 0, 0, 200)
    out = BytesIO()
    Image.fromarray(rgba).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(pediatric_chest(np.full((32, 32), 90, np.uint8))))


def _delivery(
    source: pydicom.Dataset, key: str, probability: float = 0.8, supersedes: str = ""
) -> Delivery:
    """A result's documents as the gateway builds them for the ingest (its key is the seed):
    an SR, a heatmap Secondary Capture and the FHIR Bundle (a DiagnosticReport, two
    Observations and the Device)."""
    uid = str(source.SOPInstanceUID)
    result = StudyResult(
        request_id=key,
        pipeline="cxr_pneumonia",
        model=ModelRef("cxr_pneumonia", "2"),
        assessment=Assessment(
            [
                Finding(PNEUMONIA, probability, 0.42, True, uid, heatmap_png=_overlay(32, 32)),
                Finding(EFFUSION, 0.1, 0.5, False, uid),
            ],
            TriagePriority.URGENT,
        ),
    )
    requested = OutputOptions(dicom_sr=True, dicom_heatmap=True, fhir=True)
    outputs = build_outputs([source], result, requested, uid_seed=key)
    documents = tuple(
        Document(o.kind, o.media_type, o.data, o.sop_class_uid, o.sop_instance_uid, o.name)
        for o in outputs
    )
    return Delivery("dest", key, str(source.StudyInstanceUID), documents, supersedes=supersedes)


# -- FHIR --


@pytest.fixture
def standin() -> Iterator[FhirStandIn]:
    with running_fhir_standin() as server:
        yield server


def _fhir(url: str, **fields: object) -> FhirSender:
    return FhirSender(FhirDestination.model_validate({"type": "fhir", "url": url, **fields}))


def _held(standin: FhirStandIn) -> dict[str, int]:
    kinds = ("DiagnosticReport", "Observation", "Device")
    return {kind: len(standin.resources(kind)) for kind in kinds}


def test_a_report_is_created_once_however_often_it_is_sent(
    standin: FhirStandIn, source: pydicom.Dataset
) -> None:
    sender = _fhir(standin.url)
    delivery = _delivery(source, FIRST)
    first = sender.send(delivery)
    assert first == "DiagnosticReport, Device and 2 Observations: 4 created, 0 already there"
    assert _held(standin) == {"DiagnosticReport": 1, "Observation": 2, "Device": 1}
    [report] = standin.resources("DiagnosticReport")
    assert report["status"] == "preliminary"
    ours = [i["value"] for i in report["identifier"] if i["system"] == SYSTEM]
    assert ours == [report_identifier(FIRST)]
    assert any(i["system"] == "urn:dicom:uid" for i in report["identifier"])  # the SR's, kept
    # The urn:uuid references now name the resources the server holds.
    observations = {f"Observation/{o['id']}" for o in standin.resources("Observation")}
    assert {r["reference"] for r in report["result"]} == observations
    [device] = standin.resources("Device")
    for observation in standin.resources("Observation"):
        assert observation["device"]["reference"] == f"Device/{device['id']}"

    again = sender.send(delivery)
    assert again == "DiagnosticReport, Device and 2 Observations: 0 created, 4 already there"
    assert _held(standin) == {"DiagnosticReport": 1, "Observation": 2, "Device": 1}
    for observation in standin.resources("Observation"):
        [value] = [i["value"] for i in observation["identifier"] if i["system"] == SYSTEM]
        assert len(standin.with_identifier("Observation", SYSTEM, value)) == 1


def test_identity_only_where_the_rule_allows_it(
    standin: FhirStandIn, source: pydicom.Dataset
) -> None:
    """Without identity labels (the default) no resource has a subject; with them (a rule with
    ``identity: true``, the exporter reading the study's PatientID) the report and observations
    name the patient by identifier, and the stand-in validates the result."""
    sender = _fhir(standin.url)
    sender.send(_delivery(source, FIRST))
    held = [*standin.resources("DiagnosticReport"), *standin.resources("Observation")]
    assert held and all("subject" not in r for r in held)
    named = dataclasses.replace(
        _delivery(source, SECOND),
        labels={"patient_id": "PID-4711", "patient_issuer": "HOSPITAL-A"},
    )
    sender.send(named)
    ours = standin.with_identifier("DiagnosticReport", SYSTEM, report_identifier(SECOND))
    assert [r["subject"] for r in ours] == [
        {
            "type": "Patient",
            "identifier": {"value": "PID-4711", "assigner": {"display": "HOSPITAL-A"}},
        }
    ]


def test_a_superseding_result_amends_the_same_report(
    standin: FhirStandIn, source: pydicom.Dataset
) -> None:
    sender = _fhir(standin.url)
    sender.send(_delivery(source, FIRST))
    [before] = standin.resources("DiagnosticReport")

    later = _delivery(source, SECOND, probability=0.9, supersedes=FIRST)
    receipt = sender.send(later)
    assert receipt == (
        "DiagnosticReport, Device and 2 Observations: 2 created, 1 already there, 1 updated"
    )
    [after] = standin.resources("DiagnosticReport")
    assert after["id"] == before["id"]
    assert after["status"] == "amended"
    assert after["conclusion"] != before["conclusion"]  # 0.9 now, not 0.8
    ours = {i["value"] for i in after["identifier"] if i["system"] == SYSTEM}
    assert ours == {report_identifier(FIRST), report_identifier(SECOND)}
    new = {o["id"] for o in standin.resources("Observation")[2:]}
    assert {r["reference"] for r in after["result"]} == {f"Observation/{i}" for i in new}
    assert _held(standin) == {"DiagnosticReport": 1, "Observation": 4, "Device": 1}

    # Sent again, and the earlier result sent late: still one report, nothing new.
    sender.send(later)
    assert sender.send(_delivery(source, FIRST)).endswith("0 created, 4 already there")
    assert _held(standin) == {"DiagnosticReport": 1, "Observation": 4, "Device": 1}
    assert standin.resources("DiagnosticReport")[0]["status"] == "amended"


def test_fhir_failures_are_classified_by_the_failure_table(
    standin: FhirStandIn, source: pydicom.Dataset
) -> None:
    sender = _fhir(standin.url, timeout_seconds=5)
    delivery = _delivery(source, FIRST)
    standin.fail_next(1, 503)
    with pytest.raises(TransientFailure) as transient:
        sender.send(delivery)
    assert transient.value.status == "HTTP 503"
    assert "OperationOutcome: transient" in transient.value.reason
    standin.fail_next(1, 400)
    with pytest.raises(PermanentFailure) as permanent:
        sender.send(delivery)
    assert permanent.value.status == "HTTP 400"
    assert standin.count() == 0
    # A table that retries 400s instead.
    lenient = _fhir(standin.url, failures={"transient": ["http:400"]})
    standin.fail_next(1, 400)
    with pytest.raises(TransientFailure):
        lenient.send(delivery)
    assert sender.send(delivery).endswith("4 created, 0 already there")


def test_an_unreachable_or_silent_fhir_server_is_transient(source: pydicom.Dataset) -> None:
    delivery = _delivery(source, FIRST)
    with refused_port() as port, pytest.raises(TransientFailure) as refused:
        _fhir(f"http://127.0.0.1:{port}/fhir").send(delivery)
    assert refused.value.status == "connection"
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/fhir"
        with pytest.raises(TransientFailure) as slow:
            _fhir(url, timeout_seconds=0.5).send(delivery)
    assert slow.value.status == "timeout"


def test_an_invalid_document_is_permanent_and_never_sent(
    standin: FhirStandIn, source: pydicom.Dataset
) -> None:
    delivery = _delivery(source, FIRST)
    [fhir] = [d for d in delivery.documents if d.kind == "fhir"]
    bundle = json.loads(fhir.data)
    del bundle["entry"][0]["resource"]["code"]  # DiagnosticReport.code is required
    broken = Document("fhir", fhir.media_type, json.dumps(bundle).encode(), name="fhir")
    with pytest.raises(PermanentFailure) as failure:
        _fhir(standin.url).send(Delivery("dest", FIRST, delivery.study_uid, (broken,)))
    assert failure.value.status == "invalid FHIR document"
    assert standin.requests == []


def test_the_bearer_token_is_read_at_every_send(
    standin: FhirStandIn, source: pydicom.Dataset, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    sender = _fhir(standin.url, auth=HttpAuth(bearer_token_file=token).model_dump())
    delivery = _delivery(source, FIRST)
    sender.send(delivery)
    token.write_text("rotated-token\n")
    sender.send(delivery)
    sent = [h.get("Authorization") for h in standin.headers]
    assert sent == ["Bearer first-token", "Bearer rotated-token"]
    token.unlink()
    with pytest.raises(TransientFailure) as missing:
        sender.send(delivery)
    assert missing.value.status == "credentials"
    assert len(standin.headers) == 2


def test_tls_is_checked_against_the_destinations_ca_file(
    source: pydicom.Dataset, tmp_path: Path
) -> None:
    pki = create_dev_pki(tmp_path / "pki")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    auth = {"username": "imaging", "password_file": str(password)}
    delivery = _delivery(source, FIRST)
    with running_fhir_standin(tls=server) as standin:
        assert standin.url.startswith("https://")
        with pytest.raises(TransientFailure) as untrusted:
            _fhir(standin.url, auth=auth).send(delivery)  # the system's CAs only
        assert untrusted.value.status == "connection"
        assert "TLS certificate not trusted" in untrusted.value.reason
        trusted = _fhir(standin.url, auth=auth, ca_file=str(pki.ca_cert))
        assert trusted.send(delivery).endswith("4 created, 0 already there")
        # aW1hZ2luZzpzM2NyZXQ= is base64 of "imaging:s3cret"
        assert [h.get("Authorization") for h in standin.headers] == ["Basic aW1hZ2luZzpzM2NyZXQ="]


# -- DICOMweb (STOW-RS) --


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _stored(orthanc: Orthanc, study: str) -> list[str]:
    found = orthanc.get(f"/dicom-web/studies/{study}/instances")
    return sorted(item["00080018"]["Value"][0] for item in found)


def test_stow_rs_stores_each_instance_once(orthanc: Orthanc, source: pydicom.Dataset) -> None:
    delivery = _delivery(source, FIRST)
    dicom = sorted(d.sop_instance_uid for d in delivery.documents if d.kind != "fhir")
    assert len(dicom) == 2  # the SR and the heatmap; the FHIR document is skipped
    sender = DicomWebSender(DicomWebDestination(type="dicomweb", url=f"{orthanc.url}/dicom-web/"))
    assert sender.send(delivery) == "2 instances stored"
    assert _stored(orthanc, delivery.study_uid) == dicom
    assert sender.send(delivery) == "2 instances stored"
    assert _stored(orthanc, delivery.study_uid) == dicom
    assert len(orthanc.get("/instances")) == 2


def test_stow_rs_to_a_wrong_url_is_permanent(orthanc: Orthanc, source: pydicom.Dataset) -> None:
    sender = DicomWebSender(DicomWebDestination(type="dicomweb", url=f"{orthanc.url}/no-such"))
    with pytest.raises(PermanentFailure) as failure:
        sender.send(_delivery(source, FIRST))
    assert failure.value.status == "HTTP 404"


def test_instances_the_store_refuses_fail_as_the_table_says(
    orthanc: Orthanc, source: pydicom.Dataset
) -> None:
    """An instance of another study than the one posted to: Orthanc refuses it in the Failed
    SOP Sequence (0x0110, processing failure), which the default table retries (nothing
    matches it) and a table listing it dead-letters."""
    stray = new_instance(SecondaryCaptureImageStorage)
    stray.StudyInstanceUID, stray.SeriesInstanceUID = generate_uid(), generate_uid()
    stray.Modality = "OT"
    document = Document("dicom_sr", "application/dicom", to_bytes(stray), name="stray")
    delivery = Delivery("dest", FIRST, str(source.StudyInstanceUID), (document,))
    url = f"{orthanc.url}/dicom-web"
    with pytest.raises(TransientFailure) as transient:
        DicomWebSender(DicomWebDestination(type="dicomweb", url=url)).send(delivery)
    assert transient.value.status == "0x0110"
    assert "1 of 1 instances not stored (HTTP 409; dimse:0x0110)" in transient.value.reason
    strict = DicomWebDestination.model_validate(
        {"type": "dicomweb", "url": url, "failures": {"permanent": ["dimse:0x0110"]}}
    )
    with pytest.raises(PermanentFailure) as permanent:
        DicomWebSender(strict).send(delivery)
    assert permanent.value.status == "0x0110"


def test_stow_rs_to_nobody_is_transient(source: pydicom.Dataset) -> None:
    with refused_port() as port, pytest.raises(TransientFailure) as failure:
        url = f"http://127.0.0.1:{port}/dicom-web"
        DicomWebSender(DicomWebDestination(type="dicomweb", url=url)).send(_delivery(source, FIRST))
    assert failure.value.status == "connection"
