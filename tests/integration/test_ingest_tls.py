"""The ingest as `imaging-platform up --tls` runs it with API keys on: DIMSE over TLS with
client certificates, the worker calling the gateway over mutual TLS with its own key and
certificate, the DICOM caller asserted as the origin by that worker alone, and the studies API
answering the CLI's certificate only (not every certificate the edge CA signed)."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from io import BytesIO

import grpc
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from waiting import wait_until

from services.api.imaging.v1 import gateway_pb2, ingest_pb2
from services.cli.client import GatewayClient
from services.cli.main import PNEUMONIAMNIST
from services.cli.pki import INGEST_CLIENT_NAME, DevPki, create_dev_pki
from services.cli.samples import pneumoniamnist_samples, to_bytes
from services.cli.stack import Ports, Stack
from services.cli.studies import IngestClient, state_name
from services.common.audit import AuditKey
from services.common.tls_files import TlsFiles

pytestmark = pytest.mark.integration

API_KEY = "key-of-the-reading-room-workstation"
SCU_AE = "TLS_MODALITY"
FINAL = ("done", "refused", "failed", "dead_lettered")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return create_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stack(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("ingest-tls")
    keys = run_dir / "user-api-keys"
    keys.write_text(f"reading-room {hashlib.sha256(API_KEY.encode()).hexdigest()}\n")
    running = Stack(
        run_dir=run_dir,
        ports=Ports.free(),
        ingest=True,
        extra_env={"IMAGING_API_KEYS_FILE": str(keys), "IMAGING_QUIET_SECONDS": "600"},
    )
    running.use_dev_pki(pki)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _scu_context(pki: DevPki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    context.check_hostname = False  # the server certificate names 127.0.0.1 as an IP SAN
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _chest() -> pydicom.Dataset:
    ds = pydicom.dcmread(BytesIO(pneumoniamnist_samples(PNEUMONIAMNIST)[0][1]))
    ds.StudyInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _store(stack: Stack, ds: pydicom.Dataset, context: ssl.SSLContext | None) -> int | None:
    ae = AE(ae_title=SCU_AE)
    ae.connection_timeout = ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    tls = (context, "127.0.0.1") if context is not None else None
    assoc = ae.associate("127.0.0.1", stack.ports.dimse, ae_title="IMAGING", tls_args=tls)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(pydicom.dcmread(BytesIO(to_bytes(ds))))
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def test_a_study_over_dicom_tls_is_analysed_by_the_worker_with_its_own_identity(
    stack: Stack, pki: DevPki
) -> None:
    ds = _chest()
    study_uid = str(ds.StudyInstanceUID)
    # Plaintext, or TLS without a client certificate, never gets an association.
    assert _store(stack, ds, None) is None
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    anonymous.check_hostname = False
    assert _store(stack, ds, anonymous) is None
    assert _store(stack, ds, _scu_context(pki)) == 0x0000

    cli = IngestClient(stack.ingest_address, TlsFiles(pki.client_cert, pki.client_key, pki.ca_cert))
    try:
        cli.close_study(study_uid)

        def finished() -> ingest_pb2.Study | None:
            study = cli.show(study_uid)
            return study if state_name(study) in FINAL else None

        study = wait_until(finished, 120, "the study sent over TLS to reach a final state")
    finally:
        cli.close()
    assert state_name(study) == "done", study.error

    key = AuditKey.from_file(stack.audit_key_file)
    records = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
    analyses = [
        r
        for r in records
        if r.get("method") == "AnalyzeStream"
        and r.get("study_uid_hmac") == key.pseudonym(study_uid)
    ]
    # The worker called with its own key (the gateway requires one) and named the caller.
    assert [(r["client"], r["origin_ae"], r["status"]) for r in analyses] == [
        (INGEST_CLIENT_NAME, SCU_AE, "OK")
    ]


def test_the_studies_api_answers_the_clis_certificate_only(stack: Stack, pki: DevPki) -> None:
    assert pki.ingest_client_cert is not None and pki.ingest_client_key is not None
    other = IngestClient(
        stack.ingest_address,
        TlsFiles(pki.ingest_client_cert, pki.ingest_client_key, pki.ca_cert),
    )
    try:
        with pytest.raises(grpc.RpcError) as refused:
            other.list()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        other.close()
    cli = IngestClient(stack.ingest_address, TlsFiles(pki.client_cert, pki.client_key, pki.ca_cert))
    try:
        assert isinstance(cli.list(), list)
        with pytest.raises(grpc.RpcError) as unknown:
            cli.show("1.2.3.4.5")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert unknown.value.details() == "no such study in the ingest"
        # Bad input: the right status and a reason that quotes nothing the caller sent.
        with pytest.raises(grpc.RpcError) as bad:
            cli.show("1.2.x; DROP")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.details() == "study_instance_uid is not a DICOM UID"
        with pytest.raises(grpc.RpcError) as no_export:
            cli.export("pacs.not-hex")
        assert no_export.value.code() == grpc.StatusCode.NOT_FOUND
        assert "<destination>.<result key>" in (no_export.value.details() or "")
    finally:
        cli.close()


def test_only_the_workers_identity_may_assert_an_origin(stack: Stack, pki: DevPki) -> None:
    """The reading room's key and certificate: analysing is allowed, asserting a DICOM caller
    as the origin is not."""
    client = GatewayClient(
        stack.gateway_address,
        files=TlsFiles(pki.client_cert, pki.client_key, pki.ca_cert),
        api_key=API_KEY,
    )
    try:
        request = gateway_pb2.AnalyzeRequest(
            instances=[to_bytes(_chest())],
            origin=gateway_pb2.Origin(calling_ae_title=SCU_AE, source_address="127.0.0.1"),
        )
        with pytest.raises(grpc.RpcError) as denied:
            client.stub.Analyze(request, timeout=60)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert client.analyze([to_bytes(_chest())]).pipeline == "cxr_pneumonia"
    finally:
        client.close()
