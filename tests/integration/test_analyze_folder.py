"""`imaging-platform analyze FOLDER` against the real stack: two studies found by their
headers, a file that is not DICOM skipped and counted, one table per study, and with --out a
quick look per heatmap and a Secondary Capture that says its status in its pixels' band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import CHEST_FILES, MEDMNIST_DIR
from PIL import Image
from synthetic import PATIENT_ID, PATIENT_NAME, chest_image

from services.cli.main import main
from services.cli.stack import Stack

pytestmark = pytest.mark.integration


def test_a_folder_of_two_studies_is_two_requests_with_tables_and_quick_looks(
    stack: Stack, dicom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    (folder / "child").mkdir(parents=True)
    (folder / "adult.dcm").symlink_to(dicom_dir / CHEST_FILES[0])
    image = np.load(MEDMNIST_DIR / "pneumoniamnist_28_reconstructed.npz")["test_images"][0]
    (folder / "child" / "child.dcm").write_bytes(chest_image(image))  # a 4-year-old's PA CR
    (folder / "child" / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["analyze", str(folder), "--gateway", stack.gateway_address, "--out", str(out)]
    assert main([*argv, "--documents", "heatmap"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == "2 studies, 2 file(s); skipped 1 file(s): 1 not DICOM"
    adult = lines.index(next(line for line in lines if line.startswith("adult.dcm  [")))
    child = lines.index(next(line for line in lines if line.startswith("child.dcm  [")))
    assert "pipeline cxr_pneumonia" in lines[adult] and "triage ROUTINE" in lines[adult]
    assert "INDETERMINATE (outside intended use: patient age" in lines[adult + 1]
    verdict = lines[child + 1]
    assert "Pneumonia" in verdict
    assert "POSITIVE (p >= threshold)" in verdict or "NEGATIVE (p < threshold)" in verdict
    assert PATIENT_NAME not in captured.out and PATIENT_ID not in captured.out
    for stem in ("adult", "child"):
        with Image.open(out / f"{stem}.0.233604007.quicklook.png") as look:
            assert look.mode == "RGB" and max(look.size) >= 384
        sc = pydicom.dcmread(out / f"{stem}.heatmap-0.dcm")
        assert "not a diagnosis" in sc.SeriesDescription
    status = "POSITIVE" if "POSITIVE (" in verdict else "NEGATIVE"
    child_sc = pydicom.dcmread(out / "child.heatmap-0.dcm")
    assert child_sc.SeriesDescription.startswith(status)
    assert pydicom.dcmread(out / "adult.heatmap-0.dcm").SeriesDescription.startswith(
        "INDETERMINATE"
    )
    # A second run into the same folder is refused without --force, before any call.
    assert main(argv) == 2
    assert "is not empty" in capsys.readouterr().err
