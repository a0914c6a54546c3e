"""Results as DICOM SR / SEG / Secondary Capture and FHIR, checked with the real tools:
highdicom reads them back, dciodvfy (dicom3tools) validates each DICOM object, dsrdump (dcmtk)
renders the SR, fhir.resources parses and validates the FHIR JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from services.common.errors import InternalError, InvalidInput, OutsideIntendedUse, PlatformError
from services.common.grids import Segmentation, VolumeGrid
from services.common.results import (
    Assessment,
    Caveat,
    CaveatReason,
    CodedConcept,
    Finding,
    FindingStatus,
    Measurement,
    ModelRef,
    OutputOptions,
    StudyResult,
    TriagePriority,
)
from services.gateway.reports import (
    DICOM_MEDIA_TYPE,
    FHIR_MEDIA_TYPE,
    EncodedObject,
    _seam,
    build_outputs,
    refusal_outputs,
)
from services.gateway.reports import codes as report_codes

CHEST = Path(__file__).resolve().parents[2].parent / "shared/data/dicom/pydicom-data/RG1_UNCR.dcm"
TOOLS = {"dciodvfy": "dicom3tools", "dsrdump": "dcmtk"}
ALL = OutputOptions(dicom_sr=True, dicom_seg=True, dicom_heatmap=True, fhir=True)

PNEUMONIA = CodedConcept(code="233604007", coding_scheme="SCT", display_name="Pneumonia")
PNEUMOTHORAX = CodedConcept(code="36118008", coding_scheme="SCT", display_name="Pneumothorax")
EFFUSION = CodedConcept(code="60046008", coding_scheme="SCT", display_name="Pleural effusion")
BRAIN_VOLUME = CodedConcept(code="118565006", coding_scheme="SCT", display_name="Brain volume")
REFUSAL = "patient age 45 years is outside the pipeline's intended use (1-5 years)."

MR_SHAPE = (14, 36, 44)  # slices, rows, cols
MR_SPACING = (2.5, 1.5, 1.25)  # mm, same order
MR_PATIENT = ("MRPHANTOM^HEAD", "MR-PHANTOM-7")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package {TOOLS[name]}")
    return path


def dciodvfy(data: bytes, tmp_path: Path, name: str) -> list[str]:
    """dciodvfy's lines for the object: fails on any Error line, returns the warnings."""
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy found errors in {name}:\n" + "\n".join(lines)
    return [line for line in lines if line.startswith("Warning")]


def dsrdump(data: bytes, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run(
        [tool("dsrdump"), "+Pl", str(path)], capture_output=True, text=True, check=True
    )
    return run.stdout


def heatmap_png(rows: int, cols: int) -> bytes:
    """An RGBA overlay like services/postprocessor/heatmaps.py draws: the image's aspect,
    at most 256 px on the long side, transparent but for one patch."""
    scale = min(1.0, 256 / max(rows, cols))
    width, height = round(cols * scale), round(rows * scale)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[20:80, 30:120] = (255, 0, 0, 160)
    buffer = BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


# --- the chest radiograph and its result -----------------------------------------------------


@pytest.fixture(scope="module")
def chest() -> Dataset:
    if not CHEST.exists():
        pytest.fail(f"{CHEST} not found; shared data must sit beside the repo")
    return pydicom.dcmread(CHEST)


def chest_result(chest: Dataset) -> StudyResult:
    uid = str(chest.SOPInstanceUID)
    png = heatmap_png(int(chest.Rows), int(chest.Columns))
    caveats = (
        Caveat(CaveatReason.OUTSIDE_INTENDED_USE, "patient age outside 1-5 years", uid),
        Caveat(CaveatReason.OUT_OF_DISTRIBUTION, "out-of-distribution score 3.2 > 2.1", uid),
        Caveat(CaveatReason.IMAGE_QUALITY, "lateral view", uid),
    )
    findings = [
        Finding(PNEUMONIA, 0.83, 0.4175, True, uid, heatmap_png=png),
        Finding(PNEUMOTHORAX, 0.12, 0.5, False, uid),
        Finding(
            EFFUSION,
            0.91,
            0.5,
            False,
            uid,
            heatmap_png=png,
            status=FindingStatus.INDETERMINATE,
            caveats=caveats,
        ),
    ]
    return StudyResult(
        request_id="req-1",
        pipeline="cxr_pneumonia",
        model=ModelRef("cxr_pneumonia", "2"),
        assessment=Assessment(findings, TriagePriority.URGENT, caveats=list(caveats)),
    )


@pytest.fixture(scope="module")
def chest_outputs(chest: Dataset) -> dict[str, EncodedObject]:
    outputs = build_outputs([chest], chest_result(chest), ALL)
    return {o.name: o for o in outputs}


# --- a synthetic MR series, its brain mask and volume ---------------------------------------


def mr_series(order: list[int] | None = None) -> tuple[list[Dataset], VolumeGrid, np.ndarray]:
    """An axial MR series (unordered, as scanners send them) with its grid and a mask."""
    slices, rows, cols = MR_SHAPE
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    origin = np.array([-cols * MR_SPACING[2] / 2, -rows * MR_SPACING[1] / 2, -40.0])
    order = order if order is not None else list(np.random.default_rng(3).permutation(slices))
    sources = []
    for k in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID = MR_PATIENT
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "7", ""
        ds.Modality, ds.BodyPartExamined, ds.SeriesNumber = "MR", "HEAD", 3
        ds.InstanceNumber = int(k) + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [
            float(v) for v in origin + np.array([0.0, 0.0, k * MR_SPACING[0]])
        ]
        ds.PixelSpacing = [MR_SPACING[1], MR_SPACING[2]]
        ds.SliceThickness = MR_SPACING[0]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.full((rows, cols), 100 + k, np.uint16).tobytes()
        sources.append(ds)
    affine = np.eye(4)
    affine[:3, 0] = [MR_SPACING[2], 0, 0]
    affine[:3, 1] = [0, MR_SPACING[1], 0]
    affine[:3, 2] = [0, 0, MR_SPACING[0]]
    affine[:3, 3] = origin
    grid = VolumeGrid(series, MR_SHAPE, MR_SPACING, affine)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in MR_SHAPE), indexing="ij")
    mask = ((z / 0.7) ** 2 + (y / 0.8) ** 2 + (x / 0.75) ** 2 <= 1).astype(np.uint8)
    return sources, grid, mask


def mr_result(grid: VolumeGrid, mask: np.ndarray, caveat_uid: str) -> StudyResult:
    volume = Measurement(
        BRAIN_VOLUME, float(mask.sum()) * grid.voxel_ml, "mL", grid.series_instance_uid
    )
    caveat = Caveat(CaveatReason.OUTSIDE_INTENDED_USE, "patient age under 18 years", caveat_uid)
    return StudyResult(
        request_id="req-2",
        pipeline="mri_brain_extraction",
        model=ModelRef("mri_brain_extraction", "1"),
        assessment=Assessment(
            [],
            TriagePriority.ROUTINE,
            measurements=[volume],
            segmentations=[Segmentation("brain", grid, mask)],
            caveats=[caveat],
        ),
    )


@pytest.fixture(scope="module")
def mr() -> tuple[list[Dataset], VolumeGrid, np.ndarray, dict[str, EncodedObject]]:
    sources, grid, mask = mr_series()
    result = mr_result(grid, mask, str(sources[0].SOPInstanceUID))
    outputs = build_outputs(sources, result, ALL)
    return sources, grid, mask, {o.name: o for o in outputs}


# --- the API ----------------------------------------------------------------------------------


def test_outputs_are_the_requested_ones(
    chest: Dataset, chest_outputs: dict[str, EncodedObject]
) -> None:
    assert list(chest_outputs) == ["sr", "heatmap-0", "heatmap-2", "fhir"]
    sr = chest_outputs["sr"]
    assert (sr.kind, sr.media_type, sr.sop_class_uid) == (
        "dicom_sr",
        DICOM_MEDIA_TYPE,
        "1.2.840.10008.5.1.4.1.1.88.34",
    )
    assert chest_outputs["heatmap-0"].sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    assert chest_outputs["fhir"].media_type == FHIR_MEDIA_TYPE
    only_fhir = build_outputs([chest], chest_result(chest), OutputOptions(fhir=True))
    assert [o.kind for o in only_fhir] == ["fhir"]
    assert build_outputs([chest], chest_result(chest), OutputOptions()) == []
    for o in chest_outputs.values():
        if o.media_type == DICOM_MEDIA_TYPE:
            assert pydicom.dcmread(BytesIO(o.data)).SOPInstanceUID == o.sop_instance_uid


# --- SR -----------------------------------------------------------------------------------------


def _report(data: bytes) -> tuple[hd.sr.Comprehensive3DSR, hd.sr.MeasurementReport]:
    sr = hd.sr.srread(BytesIO(data))
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    return sr, sr.content


def _texts(group: hd.sr.Template, relationship: str) -> dict[str, str]:
    """TEXT items of a group's container: concept meaning -> value."""
    return {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT" and item.RelationshipType == relationship
    }


def _caveats(group: hd.sr.Template) -> list[str]:
    return [
        str(q.value.value)
        for q in group.get_qualitative_evaluations()
        if q.name == report_codes.CAVEAT
    ]


def _status(group: hd.sr.MeasurementsAndQualitativeEvaluations, concept: CodedConcept) -> str:
    values = [
        q.value
        for q in group.get_qualitative_evaluations()
        if q.name.value == concept.code and q.name.scheme_designator == concept.coding_scheme
    ]
    assert len(values) == 1
    return str(values[0].meaning)


def test_sr_round_trip_gives_back_the_findings(
    chest: Dataset, chest_outputs: dict[str, EncodedObject]
) -> None:
    sr, report = _report(chest_outputs["sr"].data)
    assert sr.StudyInstanceUID == chest.StudyInstanceUID
    assert sr.SeriesInstanceUID != chest.SeriesInstanceUID
    # The patient module comes from the source, as PACS files it.
    assert (sr.PatientID, str(sr.PatientName)) == (chest.PatientID, str(chest.PatientName))
    assert sr.PatientBirthDate == chest.PatientBirthDate
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == chest.SOPInstanceUID
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")

    groups = report.get_image_measurement_groups()
    assert len(groups) == 3
    statuses = {
        concept.display_name: _status(group, concept)
        for group, concept in zip(groups, (PNEUMONIA, PNEUMOTHORAX, EFFUSION), strict=True)
    }
    assert statuses == {
        "Pneumonia": "Present",
        "Pneumothorax": "Absent",
        "Pleural effusion": "Indeterminate",
    }
    pneumonia = groups[0]
    numbers = {m.name.meaning: (m.value, m.unit.value) for m in pneumonia.get_measurements()}
    assert numbers == {"Probability": (0.83, "1"), "Threshold Value": (0.4175, "1")}
    assert pneumonia.tracking_identifier == "finding 1: Pneumonia"
    assert pneumonia.source_images[0].referenced_sop_instance_uid == chest.SOPInstanceUID
    # TID 4019 Algorithm Identification.
    algorithm = _texts(pneumonia, "HAS CONCEPT MOD")
    assert algorithm["Algorithm Name"] == "cxr_pneumonia"
    assert algorithm["Algorithm Version"] == "2"
    assert algorithm["Algorithm Parameters"] == "pipeline: cxr_pneumonia"
    # IHE AIR: the device observer context.
    (observer,) = report.get_observer_contexts()
    assert observer.observer_type == report_codes.DEVICE_OBSERVER
    attributes = observer.observer_identifying_attributes
    assert attributes.name == "cxr_pneumonia"
    assert attributes.model_name == "cxr_pneumonia version 2"


def test_indeterminate_is_written_with_its_caveats(chest_outputs: dict[str, EncodedObject]) -> None:
    _, report = _report(chest_outputs["sr"].data)
    effusion = report.get_image_measurement_groups()[2]
    assert _caveats(effusion) == ["OUTSIDE_USE", "OUT_OF_DIST", "IMAGE_QUALITY"]
    assert _texts(effusion, "CONTAINS") == {
        "Outside intended use": "patient age outside 1-5 years",
        "Out of distribution": "out-of-distribution score 3.2 > 2.1",
        "Image quality": "lateral view",
    }
    assert not _caveats(report.get_image_measurement_groups()[0])


def test_no_finding_is_written_as_found(chest_outputs: dict[str, EncodedObject]) -> None:
    """The TID 1501 "Finding" row (DCM 121071) would read as something found: it is never
    used, and the INDETERMINATE finding's concept is valued Indeterminate only."""
    sr, _ = _report(chest_outputs["sr"].data)
    items = hd.sr.utils.find_content_items(sr, recursive=True)
    names = [(i.name.value, i.name.scheme_designator) for i in items]
    assert ("121071", "DCM") not in names
    effusion = [i for i in items if i.name.value == EFFUSION.code]
    assert [i.value.meaning for i in effusion] == ["Indeterminate"]


def test_dsrdump_shows_the_concepts_and_the_indeterminate_status(
    chest_outputs: dict[str, EncodedObject], tmp_path: Path
) -> None:
    text = dsrdump(chest_outputs["sr"].data, tmp_path, "sr")
    assert 'CODE:(,,"Pneumonia")=(52101004,SCT,"Present")' in text
    assert 'CODE:(,,"Pneumothorax")=(272519000,SCT,"Absent")' in text
    assert 'CODE:(,,"Pleural effusion")=(82334004,SCT,"Indeterminate")' in text
    assert '=(OUTSIDE_USE,99IMGPLAT,"Outside intended use")' in text
    assert 'TEXT:(,,"Outside intended use")="patient age outside 1-5 years"' in text
    assert '"Pleural effusion")=(52101004' not in text
    assert 'NUM:(,,"Probability")="0.91" (1,UCUM,"no units")' in text
    assert 'TEXT:(,,"Algorithm Name")="cxr_pneumonia"' in text
    assert 'TEXT:(,,"Algorithm Version")="2"' in text
    assert 'UIDREF:(,,"Device Observer UID")' in text


def test_dciodvfy_finds_no_errors(
    chest_outputs: dict[str, EncodedObject],
    mr: tuple[list[Dataset], VolumeGrid, np.ndarray, dict[str, EncodedObject]],
    tmp_path: Path,
) -> None:
    objects = {**chest_outputs, **{f"mr-{k}": v for k, v in mr[3].items()}}
    warnings = {}
    for name, o in objects.items():
        if o.media_type == DICOM_MEDIA_TYPE:
            warnings[name] = dciodvfy(o.data, tmp_path, name)
    assert set(warnings) == {"sr", "heatmap-0", "heatmap-2", "mr-sr", "mr-seg-brain"}
    # What is left: the private coding scheme's designator, which dciodvfy does not know,
    # attributes a DICOMDIR would want that the sources lack, and the chest's own one-component
    # person name, copied as it is.
    allowed = ("99IMGPLAT", "DICOMDIR", "Retired Person Name form")
    for name, lines in warnings.items():
        unexpected = [line for line in lines if not any(a in line for a in allowed)]
        assert not unexpected, f"{name}: {unexpected}"


def test_measurement_references_its_segment(
    mr: tuple[list[Dataset], VolumeGrid, np.ndarray, dict[str, EncodedObject]], tmp_path: Path
) -> None:
    _, grid, mask, outputs = mr
    _, report = _report(outputs["sr"].data)
    seg = pydicom.dcmread(BytesIO(outputs["seg-brain"].data))
    groups = report.get_volumetric_roi_measurement_groups()
    volume = groups[0].get_measurements()[0]
    assert volume.name.value == "118565006" and volume.name.scheme_designator == "SCT"
    assert volume.unit.value == "mL"
    assert volume.value == pytest.approx(float(mask.sum()) * grid.voxel_ml)
    segment = groups[0].referenced_segment
    assert segment[0].referenced_sop_instance_uid == seg.SOPInstanceUID
    assert _caveats(groups[0]) == ["OUTSIDE_USE"]
    text = dsrdump(outputs["sr"].data, tmp_path, "mr-sr")
    assert 'NUM:(,,"Brain volume")' in text and '(mL,UCUM,"milliliter")' in text
    assert 'TEXT:(,,"Outside intended use")="patient age under 18 years"' in text


def test_refusal_report_says_why(chest: Dataset, tmp_path: Path) -> None:
    outputs = refusal_outputs(
        [chest],
        "cxr_pneumonia",
        REFUSAL,
        ALL,
        kind=OutsideIntendedUse.kind,
    )
    assert [o.kind for o in outputs] == ["dicom_sr", "fhir"]
    sr_bytes, fhir_bytes = outputs[0].data, outputs[1].data
    dciodvfy(sr_bytes, tmp_path, "refusal")
    text = dsrdump(sr_bytes, tmp_path, "refusal")
    assert f'"Reason the study was not analyzed")="{REFUSAL} No finding was produced."' in text
    assert '(111245,DCM,"No algorithms succeeded; without findings")' in text
    assert "OUTSIDE_USE" in text
    sr, report = _report(sr_bytes)
    assert sr.StudyInstanceUID == chest.StudyInstanceUID
    (group,) = report.get_image_measurement_groups()
    assert _caveats(group) == ["OUTSIDE_USE"]
    assert all(q.value.meaning != "Present" for q in group.get_qualitative_evaluations())
    bundle = Bundle.model_validate_json(fhir_bytes)
    report_resource = bundle.entry[0].resource
    assert report_resource.get_resource_type() == "DiagnosticReport"
    assert report_resource.status == "cancelled"
    assert REFUSAL in report_resource.conclusion and "No finding" in report_resource.conclusion
    assert not [e for e in bundle.entry if e.resource.get_resource_type() == "Observation"]


# --- SEG ------------------------------------------------------------------------------------


def test_seg_frames_reference_their_source_slices(
    mr: tuple[list[Dataset], VolumeGrid, np.ndarray, dict[str, EncodedObject]],
) -> None:
    sources, grid, mask, outputs = mr
    data = outputs["seg-brain"].data
    seg = hd.seg.segread(BytesIO(data))
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SegmentationType == "BINARY"
    assert seg.PatientID == MR_PATIENT[1]
    description = seg.get_segment_description(1)
    assert description.segment_label == "brain"
    assert description.segmented_property_type.value == "12738006"  # SCT Brain
    assert description.segmented_property_category.value == "91723000"  # Anatomical structure
    algorithm = description.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("mri_brain_extraction", "1")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    origin_z = float(grid.affine[2, 3])
    frames = seg.pixel_array  # (frames, rows, cols)
    assert frames.shape == mask.shape  # every slice, empty ones too
    seen = set()
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        source = by_uid[ref.ReferencedSOPInstanceUID]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in source.ImagePositionPatient])
        k = round((position[2] - origin_z) / MR_SPACING[0])
        assert np.array_equal(frames[index], mask[k]), f"frame {index} is not mask slice {k}"
        seen.add(ref.ReferencedSOPInstanceUID)
    assert seen == set(by_uid)


def test_seg_needs_the_frame_of_reference() -> None:
    sources, grid, mask = mr_series()
    del sources[4].FrameOfReferenceUID
    result = mr_result(grid, mask, "")
    with pytest.raises(InvalidInput, match="FrameOfReferenceUID"):
        build_outputs(sources, result, OutputOptions(dicom_seg=True))
    # Without the SEG the rest is made.
    assert [
        o.kind for o in build_outputs(sources, result, OutputOptions(dicom_sr=True, fhir=True))
    ] == [
        "dicom_sr",
        "fhir",
    ]


def test_seg_fails_clearly_for_a_slice_without_source() -> None:
    order = [k for k in range(MR_SHAPE[0]) if k != 5]
    sources, grid, mask = mr_series(order)
    with pytest.raises(InternalError, match=r"slice 5 .* has no source instance"):
        build_outputs(sources, mr_result(grid, mask, ""), OutputOptions(dicom_seg=True))


# --- Secondary Capture heatmaps ------------------------------------------------------------------


def test_heatmap_is_a_secondary_capture_in_the_source_study(
    chest: Dataset, chest_outputs: dict[str, EncodedObject]
) -> None:
    positive = pydicom.dcmread(BytesIO(chest_outputs["heatmap-0"].data))
    indeterminate = pydicom.dcmread(BytesIO(chest_outputs["heatmap-2"].data))
    assert positive.StudyInstanceUID == chest.StudyInstanceUID
    assert positive.SeriesInstanceUID == indeterminate.SeriesInstanceUID != chest.SeriesInstanceUID
    assert positive.PhotometricInterpretation == "RGB"
    assert max(positive.Rows, positive.Columns) == 256
    assert positive.SourceImageSequence[0].ReferencedSOPInstanceUID == chest.SOPInstanceUID
    pixels = positive.pixel_array
    # Drawn over the source image (its pixels are in the dataset, uncompressed).
    assert pixels[200:, :, :].max() > 0
    assert pixels[50, 60, 0] > pixels[50, 60, 1]  # the red patch
    assert "INDETERMINATE" in indeterminate.DerivationDescription
    assert "POSITIVE" not in indeterminate.DerivationDescription
    assert "INDETERMINATE" in indeterminate.ImageComments


def test_heatmap_over_black_without_pixels(chest: Dataset) -> None:
    headers_only = pydicom.dcmread(CHEST, stop_before_pixels=True)
    heatmap_only = OutputOptions(dicom_heatmap=True)
    (image,) = build_outputs([headers_only], chest_result(chest), heatmap_only)[:1]
    pixels = pydicom.dcmread(BytesIO(image.data)).pixel_array
    assert pixels[200:, :, :].max() == 0
    assert pixels[50, 60, 0] > 0


# --- FHIR --------------------------------------------------------------------------------------


def _resources(data: bytes, kind: str) -> list[dict[str, object]]:
    return [
        e["resource"] for e in json.loads(data)["entry"] if e["resource"]["resourceType"] == kind
    ]


def test_fhir_parses_back_and_names_the_study_and_device(
    chest: Dataset, chest_outputs: dict[str, EncodedObject]
) -> None:
    data = chest_outputs["fhir"].data
    bundle = Bundle.model_validate_json(data)
    assert bundle.type == "collection"
    report = bundle.entry[0].resource
    assert report.get_resource_type() == "DiagnosticReport"
    assert report.imagingStudy[0].identifier.system == "urn:dicom:uid"
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{chest.StudyInstanceUID}"
    # The DICOM SR with the same content is named by its SOP Instance UID.
    assert report.identifier[0].value == f"urn:oid:{chest_outputs['sr'].sop_instance_uid}"
    assert len(report.result) == 3
    (device,) = _resources(data, "Device")
    assert device["deviceName"][0] == {"name": "cxr_pneumonia", "type": "model-name"}
    assert device["version"][0]["value"] == "2"
    observations = _resources(data, "Observation")
    codes_seen = [o["code"]["coding"][0] for o in observations]
    assert codes_seen[0] == {
        "system": "http://snomed.info/sct",
        "code": "233604007",
        "display": "Pneumonia",
    }
    assert observations[0]["valueQuantity"] == {
        "value": 0.83,
        "unit": "probability",
        "system": "http://unitsofmeasure.org",
        "code": "1",
    }
    threshold = observations[0]["component"][0]
    assert threshold["valueQuantity"]["value"] == 0.4175
    # No patient identity: no Patient resource, no subject, no name or id anywhere.
    text = data.decode()
    assert not _resources(data, "Patient")
    assert all("subject" not in o for o in [*observations, *_resources(data, "DiagnosticReport")])
    for value in (*str(chest.PatientName).split("^"), chest.PatientID, chest.PatientBirthDate):
        assert str(value) not in text


def test_fhir_indeterminate_is_never_positive(chest_outputs: dict[str, EncodedObject]) -> None:
    data = chest_outputs["fhir"].data
    observations = _resources(data, "Observation")
    interpretations = [o["interpretation"][0]["coding"][0]["code"] for o in observations]
    assert interpretations == ["POS", "NEG", "IND"]
    effusion = observations[2]
    assert "Indeterminate" in effusion["interpretation"][0]["text"]
    caveats = [c["code"]["coding"][0]["code"] for c in effusion["component"][1:]]
    assert caveats == ["OUTSIDE_USE", "OUT_OF_DIST", "IMAGE_QUALITY"]
    assert effusion["component"][1]["valueString"] == "patient age outside 1-5 years"
    assert len(effusion["note"]) == 3
    conclusion = json.loads(data)["entry"][0]["resource"]["conclusion"]
    assert "Pleural effusion: INDETERMINATE" in conclusion
    assert "Pleural effusion: POSITIVE" not in conclusion


def test_fhir_measurement_in_ucum(
    mr: tuple[list[Dataset], VolumeGrid, np.ndarray, dict[str, EncodedObject]],
) -> None:
    _, grid, mask, outputs = mr
    Bundle.model_validate_json(outputs["fhir"].data)
    (volume,) = _resources(outputs["fhir"].data, "Observation")
    assert volume["code"]["coding"][0]["code"] == "118565006"
    assert volume["valueQuantity"]["code"] == "mL"
    assert volume["valueQuantity"]["value"] == pytest.approx(float(mask.sum()) * grid.voxel_ml)
    assert volume["component"][0]["valueString"] == "patient age under 18 years"
    assert MR_PATIENT[0] not in outputs["fhir"].data.decode()


# --- the error seam ----------------------------------------------------------------------------


def test_foreign_errors_become_internal_errors_without_identity(chest: Dataset) -> None:
    with pytest.raises(InternalError) as caught, _seam("test object", [chest]):
        raise ValueError(f"bad value for patient {chest.PatientName} ({chest.PatientID})")
    reason = caught.value.reason
    assert "ValueError" in reason and "test object" in reason
    assert str(chest.PatientID) not in reason
    for part in str(chest.PatientName).split("^"):
        assert part not in reason
    with pytest.raises(InvalidInput), _seam("test object", [chest]):
        raise InvalidInput("kept as it is")


def test_sources_without_uids_are_invalid_input(chest: Dataset) -> None:
    broken = pydicom.dcmread(CHEST, stop_before_pixels=True)
    del broken.StudyInstanceUID
    with pytest.raises(InvalidInput, match="StudyInstanceUID"):
        build_outputs([broken], chest_result(chest), OutputOptions(dicom_sr=True))
    with pytest.raises(PlatformError):
        build_outputs([], chest_result(chest), OutputOptions(fhir=True))


def test_person_names_are_copied_exactly(chest: Dataset, recwarn: pytest.WarningsRecorder) -> None:
    """A one-component name (highdicom warns about those, quoting them) is copied as it is,
    and no warning names it."""
    source = pydicom.dcmread(CHEST)
    source.PatientName, source.ReferringPhysicianName = "ANONYMIZED", "WARD"
    outputs = build_outputs([source], chest_result(source), ALL)
    for o in outputs:
        if o.media_type == DICOM_MEDIA_TYPE:
            ds = pydicom.dcmread(BytesIO(o.data))
            assert (str(ds.PatientName), str(ds.ReferringPhysicianName)) == ("ANONYMIZED", "WARD")
    assert not [w for w in recwarn if "ANONYMIZED" in str(w.message)]
    assert str(source.PatientName) == "ANONYMIZED"  # the source is not changed


def test_fhir_report_is_based_on_the_order_by_its_accession_number(chest: Dataset) -> None:
    """The EHR files the report against its order: basedOn a ServiceRequest identified by the
    study's Accession Number (type ACSN); none when the sources disagree or it is not one SH."""
    ordered = chest.copy()
    ordered.AccessionNumber = "ACC-2026-0042"
    (fhir,) = build_outputs([ordered], chest_result(ordered), OutputOptions(fhir=True))
    (report,) = _resources(fhir.data, "DiagnosticReport")
    (order,) = report["basedOn"]
    assert order["type"] == "ServiceRequest"
    assert order["identifier"]["value"] == "ACC-2026-0042"
    assert order["identifier"]["type"]["coding"][0]["code"] == "ACSN"
    other = ordered.copy()
    other.AccessionNumber = "ACC-2026-0043"
    unordered = ordered.copy()
    del unordered.AccessionNumber
    for sources in ([ordered, other], [unordered]):
        (fhir,) = build_outputs(sources, chest_result(ordered), OutputOptions(fhir=True))
        (report,) = _resources(fhir.data, "DiagnosticReport")
        assert "basedOn" not in report
