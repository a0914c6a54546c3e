"""Result documents through the real stack, into a real PACS: for the chest X-ray and the
brain MR pipelines, every document type (DICOM SR, SEG, Secondary Capture; FHIR) comes back,
validates with dciodvfy, and a real Orthanc accepts the DICOM ones over STOW-RS and lists
them in the source study."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import grpc
import highdicom as hd
import pydicom
import pytest
from conftest import CHEST_FILES, MEDMNIST_DIR
from orthanc import Orthanc, running_orthanc
from synthetic import brain_series

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.samples import pneumoniamnist_samples

pytestmark = pytest.mark.integration
ALL = gateway_pb2.OutputOptions(dicom_sr=True, dicom_seg=True, dicom_heatmap=True, fhir=True)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _dciodvfy_errors(data: bytes, folder: Path, name: str) -> list[str]:
    path = folder / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _items(dataset: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every content item of an SR tree, depth first."""
    for item in getattr(dataset, "ContentSequence", []):
        yield item
        yield from _items(item)


def _by_kind(response: gateway_pb2.AnalyzeResponse) -> dict[str, list[gateway_pb2.EncodedObject]]:
    found: dict[str, list[gateway_pb2.EncodedObject]] = {}
    for obj in response.outputs:
        found.setdefault(obj.kind, []).append(obj)
    return found


def _stored_in_source_study(
    orthanc: Orthanc, sources: list[bytes], outputs: list[gateway_pb2.EncodedObject]
) -> None:
    dicom = [o.data for o in outputs if o.media_type == "application/dicom"]
    answer = orthanc.stow([*sources, *dicom])
    assert not answer.get("00081198", {}).get("Value"), answer.get("00081198")  # no failures
    study = pydicom.dcmread(BytesIO(sources[0]), stop_before_pixels=True).StudyInstanceUID
    found = orthanc.get(f"/dicom-web/studies/{study}/instances")
    stored = {item["00080018"]["Value"][0] for item in found}
    assert {o.sop_instance_uid for o in outputs if o.media_type == "application/dicom"} <= stored
    studies = orthanc.get("/dicom-web/studies")
    assert study in {s["0020000D"]["Value"][0] for s in studies}


def test_a_chest_radiograph_yields_every_document_and_orthanc_files_them(
    gateway: gateway_pb2_grpc.GatewayStub, orthanc: Orthanc, tmp_path: Path
) -> None:
    [(_, dicom)] = [
        s
        for s in pneumoniamnist_samples(MEDMNIST_DIR / "pneumoniamnist_28_reconstructed.npz")
        if s[0].endswith("-pneumonia")
    ]
    response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom], options=ALL))
    documents = _by_kind(response)
    assert set(documents) == {"dicom_sr", "dicom_heatmap", "fhir"}  # no mask: no SEG
    assert not response.findings[0].heatmap_png  # only asked for as DICOM
    for kind in ("dicom_sr", "dicom_heatmap"):
        for index, obj in enumerate(documents[kind]):
            assert _dciodvfy_errors(obj.data, tmp_path, f"{kind}-{index}") == []
    sr = hd.sr.srread(BytesIO(documents["dicom_sr"][0].data))
    assert sr.StudyInstanceUID == pydicom.dcmread(BytesIO(dicom)).StudyInstanceUID
    bundle = json.loads(documents["fhir"][0].data)
    assert bundle["resourceType"] == "Bundle"
    assert "233604007" in documents["fhir"][0].data.decode()
    _stored_in_source_study(orthanc, [dicom], list(response.outputs))


def test_an_adults_radiograph_is_reported_indeterminate_never_positive(
    gateway: gateway_pb2_grpc.GatewayStub, dicom_dir: Path, tmp_path: Path
) -> None:
    dicom = (dicom_dir / CHEST_FILES[0]).read_bytes()
    options = gateway_pb2.OutputOptions(dicom_sr=True, fhir=True)
    response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom], options=options))
    documents = _by_kind(response)
    sr_path = tmp_path / "sr.dcm"
    sr_path.write_bytes(documents["dicom_sr"][0].data)
    dump = subprocess.run(["dsrdump", str(sr_path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "Pneumonia" in dump.stdout
    assert "ndeterminate" in dump.stdout and "ntended use" in dump.stdout
    fhir = documents["fhir"][0].data.decode()
    assert "INDETERMINATE" in fhir.upper() or "indeterminate" in fhir.lower()


def test_a_brain_series_yields_sr_seg_and_fhir_and_orthanc_files_them(
    gateway: gateway_pb2_grpc.GatewayStub, orthanc: Orthanc, tmp_path: Path
) -> None:
    series = brain_series()
    response = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(instances=series, options=ALL), timeout=120
    )
    documents = _by_kind(response)
    assert set(documents) == {"dicom_sr", "dicom_seg", "fhir"}
    assert not response.segmentations  # masks only asked for as DICOM SEG
    for kind in ("dicom_sr", "dicom_seg"):
        assert _dciodvfy_errors(documents[kind][0].data, tmp_path, kind) == []
    seg = hd.seg.segread(BytesIO(documents["dicom_seg"][0].data))
    source = pydicom.dcmread(BytesIO(series[0]), stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    [measurement] = response.measurements
    assert measurement.unit == "mL"
    sr = hd.sr.srread(BytesIO(documents["dicom_sr"][0].data))
    codes = [
        item.ConceptNameCodeSequence[0].CodeValue
        for item in _items(sr)
        if "ConceptNameCodeSequence" in item
    ]
    assert "118565006" in codes
    _stored_in_source_study(orthanc, series, list(response.outputs))


def test_a_refused_study_can_be_answered_with_an_sr_that_says_why(
    gateway: gateway_pb2_grpc.GatewayStub, dicom_dir: Path, tmp_path: Path
) -> None:
    dicom = (dicom_dir / CHEST_FILES[0]).read_bytes()
    options = gateway_pb2.OutputOptions(dicom_sr=True, report_refusal=True)
    response = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(
            instances=[dicom], pipeline="cxr_pneumonia_ensemble", options=options
        )
    )
    assert response.refusal.kind == "OUTSIDE_INTENDED_USE" and not response.findings
    [sr] = response.outputs
    assert _dciodvfy_errors(sr.data, tmp_path, "refusal") == []
    texts = [
        item.TextValue for item in _items(hd.sr.srread(BytesIO(sr.data))) if "TextValue" in item
    ]
    assert any("outside intended use: patient age outside 1-5 years" in t for t in texts), texts


def test_a_segmentation_of_a_series_without_a_frame_of_reference_is_bad_input(
    gateway: gateway_pb2_grpc.GatewayStub,
) -> None:
    series = []
    for data in brain_series():
        ds = pydicom.dcmread(BytesIO(data))
        del ds.FrameOfReferenceUID
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        series.append(buffer.getvalue())
    options = gateway_pb2.OutputOptions(dicom_seg=True)
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=series, options=options), timeout=120)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FrameOfReferenceUID" in (refused.value.details() or "")
    # The same series without the SEG asked for is analysed.
    response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=series), timeout=120)
    assert response.measurements
