"""A study's results in the formats PACS and EHRs file: DICOM SR (TID 1500), DICOM
Segmentation, Secondary Capture heatmaps, FHIR R4 (R4B models) DiagnosticReport.

Pure builders: pydicom datasets and the platform's result types in, bytes out (no gRPC, no
protobuf). :func:`build_outputs` and :func:`refusal_outputs` are the one seam where errors of
highdicom, pydicom and fhir.resources become the platform's: a source that lacks what an
object needs is :class:`~services.common.errors.InvalidInput` (the reason says what), anything
else a builder raises is :class:`~services.common.errors.InternalError` with the foreign
message scrubbed of the sources' identity values.

The DICOM objects copy the sources' patient and study modules (PACS files them by those);
nothing here logs an identity value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydicom.dataset import Dataset

from services.common.errors import InternalError, PlatformError

# One result object, ready to store or send (defined beside StudyResult, which carries them).
from services.common.results import (
    CaveatReason,
    DocumentKind,
    EncodedObject,
    ModelRef,
    OutputOptions,
    StudyResult,
)
from services.common.version import DISTRIBUTION, platform_version
from services.gateway.reports import capture, fhir, seg, sr, uids
from services.gateway.reports._common import (
    Context,
    encode,
    first_series_number,
    headers,
    restore_names,
    scrub,
)

__all__ = [
    "DICOM_MEDIA_TYPE",
    "FHIR_MEDIA_TYPE",
    "EncodedObject",
    "build_outputs",
    "refusal_outputs",
]

DICOM_MEDIA_TYPE = "application/dicom"
FHIR_MEDIA_TYPE = fhir.MEDIA_TYPE


@contextmanager
def _seam(what: str, sources: Sequence[Dataset]) -> Iterator[None]:
    """The platform's errors pass; any other is a builder fault (InternalError), its message
    kept for the operator's log without the sources' identity values."""
    try:
        yield
    except PlatformError:
        raise
    except Exception as err:
        message = scrub(str(err), sources)
        raise InternalError(f"building the {what} failed: {type(err).__name__}: {message}") from err


def _dicom(kind: DocumentKind, ds: Dataset, name: str, source: Dataset) -> EncodedObject:
    restore_names(ds, source)
    return EncodedObject(
        kind=kind,
        media_type=DICOM_MEDIA_TYPE,
        data=encode(ds),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        name=name,
    )


def build_outputs(
    sources: Sequence[Dataset],
    result: StudyResult,
    requested: OutputOptions,
    *,
    manufacturer: str = DISTRIBUTION,
    software_version: str = "",
    uid_seed: str = "",
    predecessors: Sequence[Dataset] = (),
) -> list[EncodedObject]:
    """The requested objects for ``result``, in the order SR, segmentations, heatmaps, FHIR.

    ``sources`` are the study's instances (headers suffice; pixel data, where present in a
    native encoding, becomes the heatmaps' background). Segmentations are made from
    ``result.assessment.segmentations``, one object per mask; heatmaps from every finding that
    has one. When both an SR and segmentations are made, the SR's volume measurements
    reference the segment they were measured on.

    ``uid_seed`` (non-empty): every UID and FHIR id of the objects derives from it
    (services/gateway/reports/uids.py), so the same result with the same seed repeats them.

    ``predecessors``: earlier versions of the SR (their headers suffice), of the same study,
    which the SR names in its Predecessor Documents Sequence.
    """
    if not requested.documents:
        return []
    with uids.seeded(uid_seed):
        return _build_outputs(
            sources, result, requested, manufacturer, software_version, predecessors
        )


def _build_outputs(
    sources: Sequence[Dataset],
    result: StudyResult,
    requested: OutputOptions,
    manufacturer: str,
    software_version: str,
    predecessors: Sequence[Dataset],
) -> list[EncodedObject]:
    software_version = software_version or platform_version()
    ctx = Context(result.pipeline, result.model, manufacturer, software_version)
    outputs: list[EncodedObject] = []
    with _seam("result objects", sources):
        heads = headers(sources)
        series_number = first_series_number(heads)
        by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
        assessment = result.assessment
        # Segmentations first: the SR references them.
        segs = []
        if requested.dicom_seg:
            for number, mask in enumerate(assessment.segmentations):
                with _seam(f"DICOM Segmentation of {mask.label!r}", sources):
                    document = seg.segmentation(
                        heads, mask, ctx, series_number=series_number + 1 + number
                    )
                segs.append((mask, document))
        sr_uid = ""
        if requested.dicom_sr:
            # A measurement references the segmentation on its series, where there is one.
            linked = {}
            for index, measurement in enumerate(assessment.measurements):
                on_series = [
                    pair
                    for pair in segs
                    if pair[0].grid.series_instance_uid == measurement.series_instance_uid
                ]
                if len(on_series) == 1:
                    linked[index] = on_series[0]
            with _seam("DICOM SR", sources):
                report = sr.measurement_report(
                    heads,
                    result,
                    ctx,
                    series_number=series_number,
                    segmentations=linked,
                    predecessors=predecessors,
                )
                outputs.append(_dicom(DocumentKind.DICOM_SR, report, "sr", sources[0]))
            sr_uid = str(report.SOPInstanceUID)
        outputs.extend(
            _dicom(DocumentKind.DICOM_SEG, document, f"seg-{mask.label}", sources[0])
            for mask, document in segs
        )
        if requested.dicom_heatmap:
            series_uid = ""
            heatmap_series = series_number + 1 + len(segs)
            for number, finding in enumerate(assessment.findings):
                if not finding.heatmap_png:
                    continue
                source = by_uid.get(finding.sop_instance_uid)
                if source is None:
                    raise InternalError(
                        f"finding {number}'s heatmap is about an instance that is not among the "
                        "study's instances given to the report builder"
                    )
                with _seam(f"heatmap of finding {number}", sources):
                    series_uid = series_uid or str(uids.uid())
                    image = capture.heatmap_image(
                        source,
                        finding,
                        number + 1,
                        ctx,
                        series_instance_uid=series_uid,
                        series_number=heatmap_series,
                    )
                    name = f"heatmap-{number}"
                    outputs.append(_dicom(DocumentKind.DICOM_HEATMAP, image, name, source))
        if requested.fhir:
            with _seam("FHIR DiagnosticReport", sources):
                data = fhir.report_bundle(heads, result, ctx, sr_uid=sr_uid)
            outputs.append(EncodedObject(DocumentKind.FHIR, FHIR_MEDIA_TYPE, data, name="fhir"))
    return outputs


def refusal_outputs(
    sources: Sequence[Dataset],
    pipeline: str,
    reason: str,
    requested: OutputOptions,
    *,
    model: ModelRef | None = None,
    kind: str = "",
    manufacturer: str = DISTRIBUTION,
    software_version: str = "",
    uid_seed: str = "",
    predecessors: Sequence[Dataset] = (),
) -> list[EncodedObject]:
    """For a study the platform refused (e.g. outside the pipeline's intended use): an SR and
    a cancelled FHIR DiagnosticReport, as requested, saying why and that no finding was made.

    ``reason`` is the refusal's public reason (no identity, by the errors' contract); ``kind``
    the refusal's error kind (services/common/errors.py), coded in the SR where it names one of
    the platform's caveats (OUTSIDE_INTENDED_USE); ``model`` names the model the pipeline would
    have run (the platform itself, version ``software_version``, if None).
    Segmentations and heatmaps do not exist for a refused study and are not made.
    ``uid_seed``, ``predecessors``: as for :func:`build_outputs`.
    """
    if not (requested.dicom_sr or requested.fhir):
        return []
    with uids.seeded(uid_seed):
        return _refusal_outputs(
            sources,
            pipeline,
            reason,
            requested,
            model,
            kind,
            manufacturer,
            software_version,
            predecessors,
        )


def _refusal_outputs(
    sources: Sequence[Dataset],
    pipeline: str,
    reason: str,
    requested: OutputOptions,
    model: ModelRef | None,
    kind: str,
    manufacturer: str,
    software_version: str,
    predecessors: Sequence[Dataset],
) -> list[EncodedObject]:
    software_version = software_version or platform_version()
    ctx = Context(
        pipeline,
        model or ModelRef(manufacturer, software_version),
        manufacturer,
        software_version,
        learned=model is not None,
    )
    outputs: list[EncodedObject] = []
    with _seam("refusal report", sources):
        heads = headers(sources)
        sr_uid = ""
        if requested.dicom_sr:
            caveat = CaveatReason(kind) if kind in {r.value for r in CaveatReason} else None
            report = sr.refusal_report(
                heads,
                reason,
                ctx,
                series_number=first_series_number(heads),
                caveat=caveat,
                predecessors=predecessors,
            )
            outputs.append(_dicom(DocumentKind.DICOM_SR, report, "sr", sources[0]))
            sr_uid = str(report.SOPInstanceUID)
        if requested.fhir:
            data = fhir.refusal_bundle(heads, reason, ctx, sr_uid=sr_uid)
            outputs.append(EncodedObject(DocumentKind.FHIR, FHIR_MEDIA_TYPE, data, name="fhir"))
    return outputs
