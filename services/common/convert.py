"""Every domain object <-> protobuf message mapping, for the servicers and clients (the only users).

Protobuf stops here: the services' core modules see only the dataclasses of services/common.
Each inner RPC's request and response has one ``*_to_proto`` / ``*_from_proto`` pair (the
gateway's client calls one side, the service's servicer the other), and each enum one explicit
table, so that a field or a value is mapped in one place. Tensors travel as raw bytes: nothing
here copies pixels beyond the one serialisation tensors.to_proto makes.
"""

from __future__ import annotations

import numpy as np

from services.api.imaging.v1 import (
    decoder_pb2,
    findings_pb2,
    gateway_pb2,
    postprocessor_pb2,
    preprocessor_pb2,
    tensor_pb2,
)
from services.common import tensors
from services.common.cards import ModelCard
from services.common.errors import InvalidInput, Misconfiguration
from services.common.exchange import PixelExchange
from services.common.grids import Segmentation, VolumeGrid
from services.common.images import (
    Decoded,
    DecodedImage,
    Geometry,
    ImageAttributes,
    Lut,
    Preprocessed,
    SharedImage,
    SharedPixels,
)
from services.common.jobs import DecodeJob, PostprocessJob, PreprocessJob
from services.common.pipelines import IntendedUse, Pipeline, Range
from services.common.results import (
    Assessment,
    Caveat,
    CaveatReason,
    CodedConcept,
    Finding,
    FindingStatus,
    Measurement,
    Origin,
    OutputOptions,
    RequestPriority,
    StudyRequest,
    StudyResult,
    TriagePriority,
)


def _lut_to_proto(lut: Lut) -> tensor_pb2.Lut:
    return tensor_pb2.Lut(
        first_mapped=lut.first_mapped,
        bits_per_entry=lut.bits_per_entry,
        data=tensors.to_proto(lut.data),
        explanation=lut.explanation,
    )


def _lut_from_proto(msg: tensor_pb2.Lut) -> Lut:
    return Lut(msg.first_mapped, msg.bits_per_entry, tensors.from_proto(msg.data), msg.explanation)


def attributes_to_proto(attrs: ImageAttributes) -> tensor_pb2.ImageAttributes:
    msg = tensor_pb2.ImageAttributes(
        sop_instance_uid=attrs.sop_instance_uid,
        sop_class_uid=attrs.sop_class_uid,
        study_instance_uid=attrs.study_instance_uid,
        series_instance_uid=attrs.series_instance_uid,
        modality=attrs.modality,
        body_part_examined=attrs.body_part_examined,
        view_position=attrs.view_position,
        transfer_syntax_uid=attrs.transfer_syntax_uid,
        photometric_interpretation=attrs.photometric_interpretation,
        bits_stored=attrs.bits_stored,
        pixel_representation=attrs.pixel_representation,
        rescale_slope=attrs.rescale_slope,
        rescale_intercept=attrs.rescale_intercept,
        pixel_spacing=list(attrs.pixel_spacing or ()),
        number_of_frames=attrs.number_of_frames,
        frame_positions=[c for position in attrs.frame_positions for c in position],
        image_orientation_patient=list(attrs.image_orientation_patient or ()),
        voi_luts=[_lut_to_proto(lut) for lut in attrs.voi_luts],
        voi_lut_function=attrs.voi_lut_function,
        instance_number=attrs.instance_number,
        series_number=attrs.series_number,
        invalid_attributes=list(attrs.invalid),
        presentation_intent_type=attrs.presentation_intent_type,
    )
    if attrs.patient_age_years is not None:
        msg.patient_age_years = attrs.patient_age_years
    if attrs.modality_lut is not None:
        msg.modality_lut.CopyFrom(_lut_to_proto(attrs.modality_lut))
    if attrs.slice_thickness is not None:
        msg.slice_thickness = attrs.slice_thickness
    if attrs.window_center is not None:
        msg.window_center = attrs.window_center
    if attrs.window_width is not None:
        msg.window_width = attrs.window_width
    return msg


def attributes_from_proto(msg: tensor_pb2.ImageAttributes) -> ImageAttributes:
    spacing = tuple(msg.pixel_spacing)
    return ImageAttributes(
        sop_instance_uid=msg.sop_instance_uid,
        sop_class_uid=msg.sop_class_uid,
        study_instance_uid=msg.study_instance_uid,
        series_instance_uid=msg.series_instance_uid,
        modality=msg.modality,
        body_part_examined=msg.body_part_examined,
        view_position=msg.view_position,
        transfer_syntax_uid=msg.transfer_syntax_uid,
        photometric_interpretation=msg.photometric_interpretation,
        bits_stored=msg.bits_stored,
        pixel_representation=msg.pixel_representation,
        rescale_slope=msg.rescale_slope,
        rescale_intercept=msg.rescale_intercept,
        window_center=msg.window_center if msg.HasField("window_center") else None,
        window_width=msg.window_width if msg.HasField("window_width") else None,
        pixel_spacing=(spacing[0], spacing[1]) if len(spacing) == 2 else None,
        number_of_frames=msg.number_of_frames,
        frame_positions=tuple(
            (float(p[0]), float(p[1]), float(p[2]))
            for p in np.reshape(np.asarray(msg.frame_positions, dtype=np.float64), (-1, 3))
        ),
        image_orientation_patient=tuple(msg.image_orientation_patient) or None,
        slice_thickness=msg.slice_thickness if msg.HasField("slice_thickness") else None,
        modality_lut=_lut_from_proto(msg.modality_lut) if msg.HasField("modality_lut") else None,
        voi_luts=tuple(_lut_from_proto(lut) for lut in msg.voi_luts),
        voi_lut_function=msg.voi_lut_function or "LINEAR",
        instance_number=msg.instance_number,
        series_number=msg.series_number,
        invalid=tuple(msg.invalid_attributes),
        patient_age_years=msg.patient_age_years if msg.HasField("patient_age_years") else None,
        presentation_intent_type=msg.presentation_intent_type,
    )


def shared_to_proto(shared: SharedPixels) -> tensor_pb2.SharedTensor:
    return tensor_pb2.SharedTensor(
        name=shared.name, dtype=tensors.dtype_to_proto(shared.dtype), shape=list(shared.shape)
    )


def shared_from_proto(msg: tensor_pb2.SharedTensor) -> SharedPixels:
    return SharedPixels(
        msg.name, tensors.dtype_from_proto(msg.dtype), tuple(int(s) for s in msg.shape)
    )


def image_to_proto(image: Decoded) -> tensor_pb2.DecodedImage:
    attributes = attributes_to_proto(image.attributes)
    if isinstance(image, SharedImage):
        shared = shared_to_proto(image.pixels)
        return tensor_pb2.DecodedImage(shared_pixels=shared, attributes=attributes)
    return tensor_pb2.DecodedImage(pixels=tensors.to_proto(image.pixels), attributes=attributes)


def decoded_from_proto(msg: tensor_pb2.DecodedImage) -> Decoded:
    """What the decoder returned, pixels left where they are (the gateway's view)."""
    attributes = attributes_from_proto(msg.attributes)
    if msg.HasField("shared_pixels"):
        return SharedImage(shared_from_proto(msg.shared_pixels), attributes)
    return DecodedImage(tensors.from_proto(msg.pixels), attributes)


def image_from_proto(
    msg: tensor_pb2.DecodedImage, exchange: PixelExchange | None = None
) -> DecodedImage:
    """The image with its pixels, read from the pixel exchange when they wait there."""
    return take_pixels(decoded_from_proto(msg), exchange)


def take_pixels(image: Decoded, exchange: PixelExchange | None) -> DecodedImage:
    """The image with its pixels: taken from the pixel exchange when they wait there (once:
    the exchange deletes them), else as they came."""
    if isinstance(image, DecodedImage):
        return image
    if exchange is None:
        raise Misconfiguration(
            "the decoder left pixels in a pixel exchange but this service has none "
            "(set IMAGING_PIXEL_EXCHANGE_DIR on the decoder and the preprocessor alike)"
        )
    return DecodedImage(exchange.take(image.pixels), image.attributes)


def geometry_to_proto(geometry: Geometry) -> tensor_pb2.ImageGeometry:
    return tensor_pb2.ImageGeometry(
        rows=geometry.rows,
        cols=geometry.cols,
        region_top=geometry.region_top,
        region_left=geometry.region_left,
        region_rows=geometry.region_rows,
        region_cols=geometry.region_cols,
    )


def geometry_from_proto(msg: tensor_pb2.ImageGeometry) -> Geometry:
    return Geometry(
        msg.rows, msg.cols, msg.region_top, msg.region_left, msg.region_rows, msg.region_cols
    )


def grid_to_proto(grid: VolumeGrid) -> tensor_pb2.VolumeGeometry:
    return tensor_pb2.VolumeGeometry(
        series_instance_uid=grid.series_instance_uid,
        shape=list(grid.shape),
        spacing=list(grid.spacing),
        affine=[float(v) for v in np.asarray(grid.affine, dtype=np.float64).ravel()],
    )


def grid_from_proto(msg: tensor_pb2.VolumeGeometry) -> VolumeGrid:
    if len(msg.shape) != 3 or len(msg.spacing) != 3 or len(msg.affine) != 16:
        raise InvalidInput("a volume geometry needs 3 shape, 3 spacing and 16 affine values")
    return VolumeGrid(
        msg.series_instance_uid,
        (int(msg.shape[0]), int(msg.shape[1]), int(msg.shape[2])),
        (float(msg.spacing[0]), float(msg.spacing[1]), float(msg.spacing[2])),
        np.asarray(msg.affine, dtype=np.float64).reshape(4, 4),
    )


def segmentation_to_proto(segmentation: Segmentation) -> tensor_pb2.Segmentation:
    return tensor_pb2.Segmentation(
        label=segmentation.label,
        geometry=grid_to_proto(segmentation.grid),
        mask=tensors.to_proto(segmentation.mask),
    )


def segmentation_from_proto(msg: tensor_pb2.Segmentation) -> Segmentation:
    return Segmentation(msg.label, grid_from_proto(msg.geometry), tensors.from_proto(msg.mask))


# --- decoding (DicomDecoder.Decode) ----------------------------------------------------------


def decode_request_to_proto(job: DecodeJob) -> decoder_pb2.DecodeRequest:
    msg = decoder_pb2.DecodeRequest(dicom=job.dicom, shared_output=job.shared_output)
    if job.shared_dicom is not None:
        msg.shared_dicom.CopyFrom(shared_to_proto(job.shared_dicom))
    return msg


def decode_request_from_proto(msg: decoder_pb2.DecodeRequest) -> DecodeJob:
    return DecodeJob(
        dicom=msg.dicom,
        shared_output=msg.shared_output,
        shared_dicom=shared_from_proto(msg.shared_dicom) if msg.HasField("shared_dicom") else None,
    )


def decode_response_to_proto(image: Decoded) -> decoder_pb2.DecodeResponse:
    return decoder_pb2.DecodeResponse(image=image_to_proto(image))


def decode_response_from_proto(msg: decoder_pb2.DecodeResponse) -> Decoded:
    """Pixels left where they are: the gateway only forwards them."""
    return decoded_from_proto(msg.image)


# --- preprocessing (Preprocessor.Preprocess) -------------------------------------------------


def preprocess_request_to_proto(job: PreprocessJob) -> preprocessor_pb2.PreprocessRequest:
    return preprocessor_pb2.PreprocessRequest(
        pipeline=job.pipeline, images=[image_to_proto(i) for i in job.images]
    )


def preprocess_request_from_proto(msg: preprocessor_pb2.PreprocessRequest) -> PreprocessJob:
    """Pixels in the pixel exchange stay there (take_pixels takes them)."""
    return PreprocessJob(msg.pipeline, tuple(decoded_from_proto(i) for i in msg.images))


def preprocess_response_to_proto(prepared: Preprocessed) -> preprocessor_pb2.PreprocessResponse:
    msg = preprocessor_pb2.PreprocessResponse(
        batch=tensors.to_proto(prepared.batch),
        geometries=[geometry_to_proto(g) for g in prepared.geometries],
        warnings=prepared.warnings,
    )
    if prepared.grid is not None:
        msg.volume.CopyFrom(grid_to_proto(prepared.grid))
    return msg


def preprocess_response_from_proto(msg: preprocessor_pb2.PreprocessResponse) -> Preprocessed:
    return Preprocessed(
        tensors.from_proto(msg.batch),
        [geometry_from_proto(g) for g in msg.geometries],
        grid_from_proto(msg.volume) if msg.HasField("volume") else None,
        list(msg.warnings),
    )


# --- findings ----------------------------------------------------------------------------------


# One table per enum, domain member -> proto value; every member and every proto value but
# UNSPECIFIED appears once (tests/unit/test_convert_wire.py checks both ways).
TRIAGE_PRIORITIES: dict[TriagePriority, findings_pb2.TriagePriority] = {
    TriagePriority.ROUTINE: findings_pb2.TRIAGE_PRIORITY_ROUTINE,
    TriagePriority.URGENT: findings_pb2.TRIAGE_PRIORITY_URGENT,
    TriagePriority.STAT: findings_pb2.TRIAGE_PRIORITY_STAT,
}
FINDING_STATUSES: dict[FindingStatus, findings_pb2.FindingStatus] = {
    FindingStatus.POSITIVE: findings_pb2.FINDING_STATUS_POSITIVE,
    FindingStatus.NEGATIVE: findings_pb2.FINDING_STATUS_NEGATIVE,
    FindingStatus.INDETERMINATE: findings_pb2.FINDING_STATUS_INDETERMINATE,
}
CAVEAT_REASONS: dict[CaveatReason, findings_pb2.CaveatReason] = {
    CaveatReason.OUTSIDE_INTENDED_USE: findings_pb2.CAVEAT_REASON_OUTSIDE_INTENDED_USE,
    CaveatReason.OUT_OF_DISTRIBUTION: findings_pb2.CAVEAT_REASON_OUT_OF_DISTRIBUTION,
    CaveatReason.IMAGE_QUALITY: findings_pb2.CAVEAT_REASON_IMAGE_QUALITY,
}
_TRIAGE_FROM_PROTO = {number: member for member, number in TRIAGE_PRIORITIES.items()}
_STATUS_FROM_PROTO = {number: member for member, number in FINDING_STATUSES.items()}
_REASON_FROM_PROTO = {number: member for member, number in CAVEAT_REASONS.items()}


def triage_to_proto(priority: TriagePriority) -> findings_pb2.TriagePriority:
    return TRIAGE_PRIORITIES[priority]


def triage_from_proto(value: findings_pb2.TriagePriority) -> TriagePriority:
    if value == findings_pb2.TRIAGE_PRIORITY_UNSPECIFIED:
        raise InvalidInput("the triage priority is unspecified")
    if value not in _TRIAGE_FROM_PROTO:
        raise InvalidInput(f"unknown triage priority {value}")
    return _TRIAGE_FROM_PROTO[value]


def status_to_proto(status: FindingStatus | None) -> findings_pb2.FindingStatus:
    """None (only before a Finding derives it) is UNSPECIFIED: derived again on the way back."""
    return findings_pb2.FINDING_STATUS_UNSPECIFIED if status is None else FINDING_STATUSES[status]


def status_from_proto(value: findings_pb2.FindingStatus) -> FindingStatus | None:
    if value == findings_pb2.FINDING_STATUS_UNSPECIFIED:
        return None  # the Finding derives it from `positive`
    if value not in _STATUS_FROM_PROTO:
        raise InvalidInput(f"unknown finding status {value}")
    return _STATUS_FROM_PROTO[value]


def finding_to_proto(finding: Finding) -> findings_pb2.Finding:
    return findings_pb2.Finding(
        code=finding.concept.code,
        coding_scheme=finding.concept.coding_scheme,
        display_name=finding.concept.display_name,
        probability=finding.probability,
        threshold=finding.threshold,
        positive=finding.positive,
        sop_instance_uid=finding.sop_instance_uid,
        heatmap_png=finding.heatmap_png,
        status=status_to_proto(finding.status),
        caveats=[caveat_to_proto(c) for c in finding.caveats],
        ood_score=finding.ood_score,
        ood_threshold=finding.ood_threshold,
    )


def caveat_to_proto(caveat: Caveat) -> findings_pb2.Caveat:
    return findings_pb2.Caveat(
        reason=CAVEAT_REASONS[caveat.reason],
        detail=caveat.detail,
        sop_instance_uid=caveat.sop_instance_uid,
    )


def caveat_from_proto(msg: findings_pb2.Caveat) -> Caveat:
    if msg.reason == findings_pb2.CAVEAT_REASON_UNSPECIFIED:
        raise InvalidInput("a caveat's reason is unspecified")
    if msg.reason not in _REASON_FROM_PROTO:
        raise InvalidInput(f"unknown caveat reason {msg.reason}")
    return Caveat(_REASON_FROM_PROTO[msg.reason], msg.detail, msg.sop_instance_uid)


def _concept(msg: findings_pb2.Finding | findings_pb2.Measurement) -> CodedConcept:
    return CodedConcept(
        code=msg.code, coding_scheme=msg.coding_scheme, display_name=msg.display_name
    )


def finding_from_proto(msg: findings_pb2.Finding) -> Finding:
    return Finding(
        concept=_concept(msg),
        probability=msg.probability,
        threshold=msg.threshold,
        positive=msg.positive,
        sop_instance_uid=msg.sop_instance_uid,
        heatmap_png=msg.heatmap_png,
        status=status_from_proto(msg.status),
        caveats=tuple(caveat_from_proto(c) for c in msg.caveats),
        ood_score=msg.ood_score,
        ood_threshold=msg.ood_threshold,
    )


def measurement_to_proto(measurement: Measurement) -> findings_pb2.Measurement:
    return findings_pb2.Measurement(
        code=measurement.concept.code,
        coding_scheme=measurement.concept.coding_scheme,
        display_name=measurement.concept.display_name,
        value=measurement.value,
        unit=measurement.unit,
        series_instance_uid=measurement.series_instance_uid,
    )


def measurement_from_proto(msg: findings_pb2.Measurement) -> Measurement:
    return Measurement(_concept(msg), msg.value, msg.unit, msg.series_instance_uid)


# --- postprocessing (Postprocessor.Postprocess) ----------------------------------------------


def postprocess_request_to_proto(job: PostprocessJob) -> postprocessor_pb2.PostprocessRequest:
    """The model outputs plus the geometry postprocessing maps them back onto (no pixels)."""
    msg = postprocessor_pb2.PostprocessRequest(
        pipeline=job.pipeline,
        outputs={name: tensors.to_proto(array) for name, array in job.outputs.items()},
        sop_instance_uids=list(job.sop_instance_uids),
        geometries=[geometry_to_proto(g) for g in job.geometries],
        heatmaps=job.heatmaps,
        masks=job.masks,
        caveats=[caveat_to_proto(c) for c in job.caveats],
    )
    if job.grid is not None:
        msg.volume.CopyFrom(grid_to_proto(job.grid))
    return msg


def postprocess_request_from_proto(msg: postprocessor_pb2.PostprocessRequest) -> PostprocessJob:
    return PostprocessJob(
        pipeline=msg.pipeline,
        outputs={name: tensors.from_proto(t) for name, t in msg.outputs.items()},
        sop_instance_uids=tuple(msg.sop_instance_uids),
        geometries=tuple(geometry_from_proto(g) for g in msg.geometries),
        grid=grid_from_proto(msg.volume) if msg.HasField("volume") else None,
        heatmaps=msg.heatmaps,
        masks=msg.masks,
        caveats=tuple(caveat_from_proto(c) for c in msg.caveats),
    )


def postprocess_response_to_proto(assessment: Assessment) -> postprocessor_pb2.PostprocessResponse:
    return postprocessor_pb2.PostprocessResponse(
        findings=[finding_to_proto(f) for f in assessment.findings],
        triage_priority=triage_to_proto(assessment.triage_priority),
        measurements=[measurement_to_proto(m) for m in assessment.measurements],
        segmentations=[segmentation_to_proto(s) for s in assessment.segmentations],
        caveats=[caveat_to_proto(c) for c in assessment.caveats],
    )


def postprocess_response_from_proto(msg: postprocessor_pb2.PostprocessResponse) -> Assessment:
    return Assessment(
        [finding_from_proto(f) for f in msg.findings],
        triage_from_proto(msg.triage_priority),
        [measurement_from_proto(m) for m in msg.measurements],
        [segmentation_from_proto(s) for s in msg.segmentations],
        [caveat_from_proto(c) for c in msg.caveats],
    )


# --- the public API ----------------------------------------------------------------------------

# The caller's UNSPECIFIED is a value of its own here: the model's default queue.
REQUEST_PRIORITIES: dict[gateway_pb2.RequestPriority, RequestPriority] = {
    gateway_pb2.REQUEST_PRIORITY_UNSPECIFIED: RequestPriority.DEFAULT,
    gateway_pb2.REQUEST_PRIORITY_ROUTINE: RequestPriority.ROUTINE,
    gateway_pb2.REQUEST_PRIORITY_URGENT: RequestPriority.URGENT,
}


def request_priority_from_proto(value: gateway_pb2.RequestPriority) -> RequestPriority:
    if value not in REQUEST_PRIORITIES:
        raise InvalidInput(f"unknown request priority {value}")
    return REQUEST_PRIORITIES[value]


def study_request(
    header: gateway_pb2.AnalyzeRequest | gateway_pb2.AnalyzeHeader,
    instances: list[bytes],
    request_id: str,
    client: str = "",
) -> StudyRequest:
    """The study of an AnalyzeRequest, or of an AnalyzeStream's header and joined chunks.

    The origin, uid_seed and predecessor documents come as sent: the gateway judges them (who
    may assert an origin, what a valid one is) before anything else of the study."""
    sent = header.origin
    origin = (
        Origin(sent.calling_ae_title, sent.source_address)
        if sent.calling_ae_title or sent.source_address
        else None
    )
    return StudyRequest(
        instances=instances,
        pipeline=header.pipeline,
        priority=request_priority_from_proto(header.priority),
        client=client,
        request_id=request_id,
        options=OutputOptions(
            heatmaps=header.options.heatmaps,
            masks=header.options.masks,
            dicom_sr=header.options.dicom_sr,
            dicom_seg=header.options.dicom_seg,
            dicom_heatmap=header.options.dicom_heatmap,
            fhir=header.options.fhir,
            report_refusal=header.options.report_refusal,
        ),
        origin=origin,
        uid_seed=header.uid_seed,
        predecessors=tuple(bytes(d) for d in header.predecessor_documents),
    )


def analyze_response(result: StudyResult) -> gateway_pb2.AnalyzeResponse:
    assessment = result.assessment
    return gateway_pb2.AnalyzeResponse(
        request_id=result.request_id,
        pipeline=result.pipeline,
        model=gateway_pb2.ModelRef(name=result.model.name, version=result.model.version),
        findings=[finding_to_proto(f) for f in assessment.findings],
        triage_priority=triage_to_proto(assessment.triage_priority),
        timings=[
            gateway_pb2.StageTiming(stage=stage, milliseconds=ms)
            for stage, ms in result.timings_ms.items()
        ],
        measurements=[measurement_to_proto(m) for m in assessment.measurements],
        segmentations=[segmentation_to_proto(s) for s in assessment.segmentations],
        warnings=result.warnings,
        caveats=[caveat_to_proto(c) for c in assessment.caveats],
        outputs=[
            gateway_pb2.EncodedObject(
                kind=o.kind,
                media_type=o.media_type,
                data=o.data,
                sop_class_uid=o.sop_class_uid,
                sop_instance_uid=o.sop_instance_uid,
                name=o.name,
            )
            for o in result.outputs
        ],
        refusal=(
            gateway_pb2.Refusal(kind=result.refusal.kind, reason=result.refusal.reason)
            if result.refusal is not None
            else None
        ),
    )


def card_to_proto(card: ModelCard) -> gateway_pb2.ModelCard:
    return gateway_pb2.ModelCard(
        name=card.name,
        version=card.version,
        intended_use=card.intended_use,
        not_for_use=card.not_for_use,
        metrics=card.metrics,
        card_reference=card.card_reference,
    )


def pipeline_info(pipeline: Pipeline, card: ModelCard | None) -> gateway_pb2.PipelineInfo:
    return gateway_pb2.PipelineInfo(
        name=pipeline.name,
        description=pipeline.description,
        model=gateway_pb2.ModelRef(name=pipeline.model.name, version=pipeline.model.version),
        accepts=pipeline.match.describe(),
        card=card_to_proto(card) if card is not None else None,
        auto_route=pipeline.auto_route,
        intended_use=(
            intended_use_to_proto(pipeline.intended_use)
            if pipeline.intended_use is not None
            else None
        ),
    )


def _range(bounds: Range | None) -> gateway_pb2.Range | None:
    return None if bounds is None else gateway_pb2.Range(min=bounds.min, max=bounds.max)


def intended_use_to_proto(use: IntendedUse) -> gateway_pb2.IntendedUse:
    return gateway_pb2.IntendedUse(
        population=use.population,
        age_years=_range(use.age_years),
        presentation_intent_types=use.presentation_intent_type,
        view_positions=use.view_position,
        photometric_interpretations=use.photometric_interpretation,
        pixel_spacing_mm=_range(use.pixel_spacing_mm),
        min_matrix=use.min_matrix,
        outside=use.outside,
        age_unknown=use.age_unknown,
    )
