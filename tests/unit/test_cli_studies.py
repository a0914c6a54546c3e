"""`imaging-platform analyze` as a tool: folders grouped into studies by their headers, and
a table a person reads (findings with their status and why, measurements with units)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    generate_uid,
)

from services.api.imaging.v1 import findings_pb2, gateway_pb2
from services.cli import main as main_module
from services.cli.client import Study, find_studies, read_instance
from services.cli.samples import new_instance

PATIENT = ("SECRET^PATIENT", "PID-PRIVATE-12345")


def _instance(
    study: str, series: str, number: int, *, pixels: bool = True, sop_class: str = ""
) -> bytes:
    ds = new_instance(UID(sop_class or ComputedRadiographyImageStorage))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
    ds.PatientName, ds.PatientID = PATIENT
    ds.Modality = "CR"
    if pixels:
        ds.Rows, ds.Columns = 4, 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.arange(16, dtype=np.uint8).tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Two studies (the first with two series, files named out of instance order, one in a
    sub-folder), a text file, a PNG, and an SR without pixel data."""
    uids = {name: generate_uid() for name in ("a", "b", "a1", "a2", "b1")}
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a-3.dcm").write_bytes(_instance(uids["a"], uids["a1"], 2))
    (root / "a-1.dcm").write_bytes(_instance(uids["a"], uids["a1"], 1))
    (root / "sub" / "a-2.dcm").write_bytes(_instance(uids["a"], uids["a2"], 1))
    (root / "b.dcm").write_bytes(_instance(uids["b"], uids["b1"], 1))
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    sr = _instance(uids["a"], generate_uid(), 1, pixels=False, sop_class=BasicTextSRStorage)
    (root / "report.dcm").write_bytes(sr)
    return root, uids


def test_a_folder_is_grouped_by_study_and_series_and_the_rest_is_counted(
    folder: tuple[Path, dict[str, str]],
) -> None:
    root, _ = folder
    scan = find_studies([root])
    assert [[p.name for p in s.files] for s in scan.studies] == [
        ["a-1.dcm", "a-3.dcm", "a-2.dcm"],  # series a1 by Instance Number, then series a2
        ["b.dcm"],
    ]
    assert [s.series for s in scan.studies] == [2, 1]
    assert (scan.not_dicom, scan.no_pixels) == (2, 1)
    assert scan.skipped() == "skipped 3 file(s): 2 not DICOM, 1 DICOM without pixel data"
    assert scan.studies[0].label == "a-1.dcm (+2 files, 2 series)"
    assert scan.studies[1].label == "b.dcm"


def test_named_files_are_grouped_too_and_per_file_keeps_them_apart(
    folder: tuple[Path, dict[str, str]],
) -> None:
    root, _ = folder
    named = [root / "b.dcm", root / "a-3.dcm", root / "a-1.dcm", root / "notes.txt"]
    grouped = find_studies(named)
    # A named file that is not DICOM is still sent (the gateway says why), as its own study.
    assert [[p.name for p in s.files] for s in grouped.studies] == [
        ["b.dcm"],
        ["a-1.dcm", "a-3.dcm"],
        ["notes.txt"],
    ]
    assert (grouped.not_dicom, grouped.no_pixels) == (0, 0)
    apart = find_studies(named, per_file=True)
    assert [[p.name for p in s.files] for s in apart.studies] == [[p.name] for p in named]
    # A file both named and inside a named folder is sent once.
    assert sum(len(s.files) for s in find_studies([root, root / "b.dcm"]).studies) == 4


def test_only_the_header_is_read(folder: tuple[Path, dict[str, str]]) -> None:
    root, uids = folder
    instance = read_instance(root / "a-3.dcm")
    assert (instance.study_uid, instance.series_uid, instance.instance_number) == (
        uids["a"],
        uids["a1"],
        2,
    )


def test_analyze_folder_without_images_is_one_line(
    folder: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = folder
    empty = root / "sub"
    (empty / "a-2.dcm").unlink()
    assert main_module.main(["analyze", str(empty), "--gateway", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no DICOM image in"), err
    assert "skipped 1 file(s): 1 not DICOM" in err[0]


def _response() -> gateway_pb2.AnalyzeResponse:
    uid = "1.2.3.4"
    outside = findings_pb2.Caveat(
        reason=findings_pb2.CAVEAT_REASON_OUTSIDE_INTENDED_USE,
        detail="patient age outside 1-5 years",
        sop_instance_uid=uid,
    )
    response = gateway_pb2.AnalyzeResponse(
        pipeline="p",
        model=gateway_pb2.ModelRef(name="m", version="2"),
        triage_priority=findings_pb2.TRIAGE_PRIORITY_URGENT,
        warnings=["slice 5 missing"],
        caveats=[
            outside,
            findings_pb2.Caveat(
                reason=findings_pb2.CAVEAT_REASON_IMAGE_QUALITY, detail="volume too coarse"
            ),
        ],
    )
    response.findings.add(
        display_name="Pneumonia",
        probability=0.973,
        threshold=0.4175,
        positive=True,
        status=findings_pb2.FINDING_STATUS_POSITIVE,
    )
    response.findings.add(
        display_name="Effusion",
        probability=0.2,
        threshold=0.5,
        status=findings_pb2.FINDING_STATUS_NEGATIVE,
    )
    response.findings.add(
        display_name="Nodule",
        probability=0.9,
        threshold=0.5,
        status=findings_pb2.FINDING_STATUS_INDETERMINATE,
        caveats=[outside],
    )
    response.measurements.add(display_name="Brain volume", value=1234.54, unit="mL")
    return response


def test_the_table_shows_every_finding_status_reason_measurement_and_caveat() -> None:
    text = main_module._table(Study([Path("x/a.dcm"), Path("x/b.dcm")], 2).label, _response())
    lines = text.splitlines()
    assert lines[0].startswith("a.dcm (+1 files, 2 series)")
    assert "pipeline p, model m/2, triage URGENT" in lines[0]
    pneumonia = next(line for line in lines if "Pneumonia" in line)
    assert "p=0.9730 thr=0.4175" in pneumonia and "POSITIVE (p >= threshold)" in pneumonia
    effusion = next(line for line in lines if "Effusion" in line)
    assert "NEGATIVE (p < threshold)" in effusion
    nodule = next(line for line in lines if "Nodule" in line)
    assert "INDETERMINATE (outside intended use: patient age outside 1-5 years)" in nodule
    assert any(line.split() == ["Brain", "volume", "1234.5", "mL"] for line in lines)
    # The study's caveat a finding already showed is not repeated; its other one is.
    assert [line.strip() for line in lines if "caveat:" in line] == [
        "caveat: image quality: volume too coarse"
    ]
    assert "  warning: slice 5 missing" in lines
    for value in PATIENT:
        assert value not in text


def test_a_refusal_is_a_line_of_its_own() -> None:
    refused = gateway_pb2.AnalyzeResponse(
        pipeline="p", refusal=gateway_pb2.Refusal(kind="OUTSIDE_INTENDED_USE", reason="adult")
    )
    assert "  REFUSED (OUTSIDE_INTENDED_USE): adult" in main_module._table("a.dcm", refused)


def _child(status: int, probability: float) -> gateway_pb2.AnalyzeResponse:
    response = gateway_pb2.AnalyzeResponse(
        model=gateway_pb2.ModelRef(name="cxr_pneumonia", version="2")
    )
    response.findings.add(
        display_name="Pneumonia", probability=probability, threshold=0.417506, status=status
    )
    return response


def test_the_demo_says_a_false_positive_is_one_and_how_often_to_expect_it() -> None:
    positive = _child(findings_pb2.FINDING_STATUS_POSITIVE, 0.973)
    text = main_module._honesty("pneumoniamnist-test-0-normal", positive, [])
    assert "known label normal: FALSE POSITIVE" in text
    # model_repository/cxr_pneumonia/metrics_v2.json, test_at_operating_threshold.
    assert "sensitivity 98.5%, specificity 74.8%" in text and "threshold 0.418" in text
    assert "about 25% of negative cases are called POSITIVE" in text
    negative = _child(findings_pb2.FINDING_STATUS_NEGATIVE, 0.1)
    text = main_module._honesty("pneumoniamnist-test-3-pneumonia", negative, [])
    assert "known label pneumonia: FALSE NEGATIVE" in text
    text = main_module._honesty("pneumoniamnist-test-3-pneumonia", positive, [])
    assert "known label pneumonia: TRUE POSITIVE" in text


def test_the_demo_prefers_the_rates_the_pipeline_listing_carries() -> None:
    card = gateway_pb2.ModelCard(
        metrics={
            "test_sensitivity_at_operating_threshold": 0.5,
            "test_specificity_at_operating_threshold": 0.25,
            "operating_threshold": 0.3,
        }
    )
    info = gateway_pb2.PipelineInfo(
        model=gateway_pb2.ModelRef(name="cxr_pneumonia", version="2"), card=card
    )
    negative = _child(findings_pb2.FINDING_STATUS_NEGATIVE, 0.1)
    text = main_module._honesty("pneumoniamnist-test-1-normal", negative, [info])
    assert "known label normal: TRUE NEGATIVE" in text
    assert "sensitivity 50.0%, specificity 25.0%" in text
    assert "the pipeline's threshold 0.418 is not the card's" in text
