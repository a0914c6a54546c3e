"""Findings and measurements as a DICOM Comprehensive 3D SR: TID 1500 Measurement Report.

Content tree (all built with highdicom's templates)::

    TID 1500 Imaging Measurement Report (DCM 126000)
      Language, TID 1001 Observation Context: TID 1002/1004 device observer (the model version
        on this platform: Device Observer UID, Name, Manufacturer, Model Name) [IHE AIR]
      Procedure Reported: SCT 363679005 Imaging procedure
      TID 1600 Image Library: every source instance
      Imaging Measurements (DCM 126010)
        per finding, TID 1501 Measurement Group:
          TID 4108 Tracking Identifier (finding's concept + a UID)
          TID 4019 Algorithm Identification (model name, version, manufacturer, pipeline,
            family DCM 123110 Artificial Intelligence)
          TID 300 Probability (DCM 122157), UCUM "1"; TID 300 Threshold Value (DCM 122411)
          CODE  <finding concept> = Present | Absent | Indeterminate   (the status)
          per caveat: CODE Result caveat = <reason>; TEXT <reason> = <detail>
          Source image for measurement group: the image the finding is about
        per measurement, TID 1411 (volumetric ROI, referencing the DICOM Segmentation's
          segment when one was built) or TID 1501 (referencing the series' images):
          TID 300 <measurement concept> in UCUM units (e.g. SCT 118565006 Brain volume, mL)
          the volume's caveats as above

A finding is never encoded with the TID 1501 "Finding" (DCM 121071) row: that row names what
was found, and a NEGATIVE or INDETERMINATE verdict is not something found. The status is a
qualitative evaluation whose concept name is the finding's concept, so INDETERMINATE reads
"Pneumonia: Indeterminate" with its caveats beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
from highdicom.sr.templates import Template
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from services.common import grids
from services.common.errors import InternalError
from services.common.results import (
    Caveat,
    CaveatReason,
    Finding,
    FindingStatus,
    Measurement,
    StudyResult,
)
from services.gateway.reports import codes, uids
from services.gateway.reports._common import Context, truncate

SOP_CLASS_UID = Comprehensive3DSRStorage


def _algorithm(ctx: Context) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=ctx.model.name,
        version=ctx.model.version,
        parameters=[f"pipeline: {ctx.pipeline}"] if ctx.pipeline else None,
        family=codes.ALGORITHM_FAMILY if ctx.learned else None,
        manufacturer=ctx.manufacturer,
    )


def _observation_context(ctx: Context) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=ctx.device_uid,
        name=truncate(ctx.model.name, 64),
        manufacturer_name=truncate(ctx.manufacturer, 64),
        model_name=truncate(ctx.algorithm, 64),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE_OBSERVER, observer_identifying_attributes=device
        )
    )


def _caveat_items(caveats: Sequence[Caveat]) -> list[hd.sr.QualitativeEvaluation]:
    return [
        hd.sr.QualitativeEvaluation(codes.CAVEAT, codes.CAVEAT_CODES[c.reason]) for c in caveats
    ]


def _add_texts(group: Template, texts: Sequence[tuple[hd.sr.CodedConcept, str]]) -> None:
    """TEXT qualitative evaluations (TID 1501 allows CODE and TEXT ones; highdicom's template
    takes only CODE) appended to the group's container."""
    container = group[0]
    for name, value in texts:
        container.ContentSequence.append(
            hd.sr.TextContentItem(
                name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )


def _caveat_texts(caveats: Sequence[Caveat]) -> list[tuple[hd.sr.CodedConcept, str]]:
    return [(codes.CAVEAT_CODES[c.reason], c.detail or c.reason.value) for c in caveats]


def _number(name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def _finding_group(
    number: int, finding: Finding, source: Dataset, ctx: Context
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    status = finding.status or FindingStatus.NEGATIVE
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid(),
            identifier=truncate(f"finding {number}: {finding.concept.display_name}", 64),
        ),
        algorithm_id=_algorithm(ctx),
        measurements=[
            _number(codes.PROBABILITY, finding.probability, codes.NO_UNITS),
            _number(codes.THRESHOLD, finding.threshold, codes.NO_UNITS),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.concept(finding.concept), codes.STATUS_CODES[status]),
            *_caveat_items(finding.caveats),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    _add_texts(group, _caveat_texts(finding.caveats))
    return group


def _measurement_group(
    number: int,
    measurement: Measurement,
    series: Sequence[Dataset],
    segment: hd.sr.ReferencedSegment | None,
    caveats: Sequence[Caveat],
    ctx: Context,
) -> (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
):
    tracking = hd.sr.TrackingIdentifier(
        uid=uids.uid(),
        identifier=truncate(f"measurement {number}: {measurement.concept.display_name}", 64),
    )
    value = hd.sr.Measurement(
        name=codes.concept(measurement.concept),
        value=float(measurement.value),
        unit=codes.unit(measurement.unit),
    )
    group: (
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    )
    if segment is not None:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=segment,
            algorithm_id=_algorithm(ctx),
            measurements=[value],
            qualitative_evaluations=_caveat_items(caveats) or None,
        )
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            algorithm_id=_algorithm(ctx),
            measurements=[value],
            qualitative_evaluations=_caveat_items(caveats) or None,
            source_images=[
                hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in series
            ]
            or None,
        )
    _add_texts(group, _caveat_texts(caveats))
    return group


def _summary_group(
    summary: hd.sr.CodedConcept | None,
    texts: Sequence[tuple[hd.sr.CodedConcept, str]],
    caveats: Sequence[Caveat],
    ctx: Context,
    *,
    caveat_texts: bool = True,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A group about the study as a whole: a processing summary and caveats no finding or
    measurement carries."""
    evaluations = _caveat_items(caveats)
    if summary is not None:
        evaluations.insert(0, hd.sr.QualitativeEvaluation(codes.PROCESSING_SUMMARY, summary))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.uid(), identifier="study"),
        algorithm_id=_algorithm(ctx),
        qualitative_evaluations=evaluations or None,
    )
    _add_texts(group, [*texts, *(_caveat_texts(caveats) if caveat_texts else [])])
    return group


_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")
_CROSS_SECTIONAL = ("CT", "MR", "PT")
_PROJECTION_KEYWORDS = ("PatientOrientation", "ImagerPixelSpacing")
_CROSS_SECTIONAL_KEYWORDS = (
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
)


def _library_entry(ds: Dataset) -> Dataset | None:
    """What TID 1600 describes an image by, or None for an instance without pixels.

    highdicom writes the TID 1602/1603 modality descriptors from attributes it expects every
    CT/MR/PT or projection image to have; a source without all of them gets the common
    descriptors only (its modality still comes from its SOP class), none invented.
    """
    if "Rows" not in ds or "Columns" not in ds:
        return None
    entry = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in ds:
            setattr(entry, keyword, ds.get(keyword))
    modality = str(ds.get("Modality") or "")
    needed = (
        _PROJECTION_KEYWORDS
        if modality in _PROJECTION
        else _CROSS_SECTIONAL_KEYWORDS
        if modality in _CROSS_SECTIONAL
        else ()
    )
    complete = bool(needed) and all(ds.get(k) is not None and str(ds.get(k)) != "" for k in needed)
    if complete and modality in _PROJECTION:
        complete = all(len(ds.get(k)) == 2 and all(str(v) for v in ds.get(k)) for k in needed)
    if complete:
        for keyword in needed:
            setattr(entry, keyword, ds.get(keyword))
    entry.Modality = modality if complete else "OT"
    return entry


def _document(
    evidence: Sequence[Dataset],
    library: Sequence[Dataset],
    groups: Sequence[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ],
    ctx: Context,
    series_number: int,
    description: str,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(ctx),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups,
        title=codes.REPORT_TITLE,
        referenced_images=[e for e in map(_library_entry, library) if e is not None] or None,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.uid(),
        series_number=series_number,
        sop_instance_uid=uids.uid(),
        instance_number=1,
        manufacturer=ctx.manufacturer,
        # The algorithm ran to the end; no person has verified what it says.
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=truncate(description, 64),
        manufacturer_model_name=truncate(ctx.manufacturer, 64),
        software_versions=ctx.software_version,
        coding_schemes=codes.coding_schemes(),
        # The Predecessor Documents Sequence (PS3.3 C.17.2): this SR is their newer version.
        previous_versions=list(predecessors) or None,
    )


def measurement_report(
    sources: Sequence[Dataset],
    result: StudyResult,
    ctx: Context,
    *,
    series_number: int,
    segmentations: Mapping[int, tuple[grids.Segmentation, Dataset]] | None = None,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The study's findings and measurements as one SR in the source study.

    ``sources`` are header copies of the study's instances; ``segmentations`` maps a
    measurement's index to the platform mask and the DICOM Segmentation built from it, which
    the measurement's group then references (and the SR lists as evidence);
    ``predecessors`` are earlier versions of this SR (same study), named in its Predecessor
    Documents Sequence.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    assessment = result.assessment
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = []
    attached: set[Caveat] = set()
    for number, finding in enumerate(assessment.findings, start=1):
        source = by_uid.get(finding.sop_instance_uid)
        if source is None:
            raise InternalError(
                f"finding {number} ({finding.concept.display_name}) is about an instance that "
                "is not among the study's instances given to the report builder"
            )
        groups.append(_finding_group(number, finding, source, ctx))
        attached.update(finding.caveats)
    segmentations = segmentations or {}
    seg_documents = [seg for _, seg in segmentations.values()]
    loose = [c for c in assessment.caveats if c not in attached]
    for number, measurement in enumerate(assessment.measurements, start=1):
        series = [
            ds for ds in sources if str(ds.SeriesInstanceUID) == measurement.series_instance_uid
        ]
        in_series = {str(ds.SOPInstanceUID) for ds in series}
        caveats = [c for c in loose if c.sop_instance_uid in in_series or not c.sop_instance_uid]
        attached.update(caveats)
        segment = None
        if number - 1 in segmentations:
            mask, seg = segmentations[number - 1]
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=1,
                source_series=hd.sr.SourceSeriesForSegmentation(mask.grid.series_instance_uid),
            )
        groups.append(_measurement_group(number, measurement, series, segment, caveats, ctx))
    rest = [c for c in loose if c not in attached]
    if not groups:
        groups.append(_summary_group(codes.NO_FINDINGS, [], rest, ctx))
    elif rest:
        groups.append(_summary_group(None, [], rest, ctx))
    description = f"AI results: {result.pipeline} ({ctx.algorithm})"
    return _document(
        [*sources, *seg_documents], sources, groups, ctx, series_number, description, predecessors
    )


def refusal_report(
    sources: Sequence[Dataset],
    reason: str,
    ctx: Context,
    *,
    series_number: int,
    caveat: CaveatReason | None = None,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """An SR saying the platform did not analyse the study, and why: CAD Processing and
    Findings Summary = "No algorithms succeeded; without findings", the reason as text (and
    coded, where it is one of the platform's caveats)."""
    group = _summary_group(
        codes.NOT_ANALYZED,
        [(codes.REFUSAL_REASON, f"{reason} No finding was produced.")],
        [Caveat(caveat, reason, "")] if caveat is not None else [],
        ctx,
        caveat_texts=False,
    )
    description = f"AI results: {ctx.pipeline or 'platform'} did not analyze the study"
    return _document(sources, sources, [group], ctx, series_number, description, predecessors)
