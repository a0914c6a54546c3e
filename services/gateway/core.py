"""The gateway's data plane: a study in, an assessment out, one stage after another.

Backends are injected (protocols below) so the orchestration, limits and routing are tested
without gRPC; the servicer only converts messages. Everything is asyncio: a study waits on its
inner calls without holding a thread, and when it fails or is cancelled the calls still in
flight are cancelled with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from services.common.audit import AuditFinding
from services.common.cards import ModelCard, card_from_parameters
from services.common.errors import (
    DependencyUnavailable,
    InvalidInput,
    Misconfiguration,
    OutsideIntendedUse,
    Overloaded,
    RateLimited,
    StudyRefused,
    TooLarge,
)
from services.common.images import Decoded, Preprocessed, decoded_bytes, join_batches
from services.common.jobs import PostprocessJob
from services.common.listeners import Service
from services.common.metrics import Stage, stage_timer
from services.common.pipelines import Pipeline, PipelineRegistry
from services.common.results import (
    UID_SEED,
    Assessment,
    Caveat,
    EncodedObject,
    ModelRef,
    Origin,
    OutputOptions,
    Refusal,
    RequestPriority,
    StudyRequest,
    StudyResult,
    TriagePriority,
)
from services.common.settings import GatewaySettings
from services.gateway import auditing
from services.gateway.policy import PolicyBook

log = logging.getLogger(__name__)
T = TypeVar("T")

# Stages the gateway times for every study (metrics and AnalyzeResponse.timings).
STAGES = tuple(Stage)

# Earlier versions of a result a request may name (AnalyzeRequest.predecessor_documents).
MAX_PREDECESSORS = 8
MAX_PREDECESSOR_BYTES = 1 << 20
# The SR storage SOP classes (PS3.4 B.5: 1.2.840.10008.5.1.4.1.1.88.x); with Modality SR, which
# leaves out the Key Object Selection documents (KO) of the same family.
_SR_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


class Decoder(Protocol):
    async def decode(self, dicom: bytes, request_id: str) -> Decoded: ...


class Preprocessor(Protocol):
    async def preprocess(
        self, pipeline: str, images: Sequence[Decoded], request_id: str
    ) -> Preprocessed: ...


class InferenceServer(Protocol):
    async def infer(
        self,
        model: str,
        version: str,
        input_name: str,
        batch: np.ndarray,
        output_names: Sequence[str],
        priority: int,
        request_id: str,
    ) -> dict[str, np.ndarray]: ...


@runtime_checkable
class ModelMetadata(Protocol):
    async def model_parameters(self, model: str, version: str) -> dict[str, str]: ...


class Postprocessor(Protocol):
    async def postprocess(self, job: PostprocessJob, request_id: str) -> Assessment: ...


class Reporter(Protocol):
    """Result documents (DICOM SR/SEG/SC, FHIR) of a study: services/gateway/reporting.py.
    ``uid_seed``: the request's (non-empty: the documents' UIDs derive from it);
    ``predecessors``: the request's predecessor documents (checked by
    :func:`predecessor_studies`), which the SR names as its earlier versions. The analyzer
    passes ``predecessors`` only when there are some."""

    def outputs(
        self,
        instances: Sequence[bytes],
        result: StudyResult,
        options: OutputOptions,
        *,
        uid_seed: str = "",
        predecessors: Sequence[bytes] = (),
    ) -> list[EncodedObject]: ...

    def refusal(
        self,
        instances: Sequence[bytes],
        pipeline: str,
        refusal: Refusal,
        options: OutputOptions,
        *,
        uid_seed: str = "",
        predecessors: Sequence[bytes] = (),
    ) -> list[EncodedObject]: ...


def predecessor_studies(documents: Sequence[bytes]) -> list[str]:
    """The StudyInstanceUID of each predecessor document (AnalyzeRequest.predecessor_documents),
    each checked to be a DICOM SR of at most MAX_PREDECESSOR_BYTES, at most MAX_PREDECESSORS of
    them; else InvalidInput, whose reason quotes no value of the documents."""
    if len(documents) > MAX_PREDECESSORS:
        raise InvalidInput(
            f"the request names {len(documents)} predecessor documents; at most "
            f"{MAX_PREDECESSORS} may be named"
        )
    if not documents:
        return []
    import pydicom  # here: it loads Pillow, which the gateway's core does not need otherwise

    studies: list[str] = []
    for index, data in enumerate(documents):
        if len(data) > MAX_PREDECESSOR_BYTES:
            raise InvalidInput(
                f"predecessor document {index} is {len(data)} bytes; the limit is "
                f"{MAX_PREDECESSOR_BYTES}"
            )
        try:
            ds = pydicom.dcmread(BytesIO(bytes(data)), stop_before_pixels=True)
            sop_class = str(ds.get("SOPClassUID") or "")
            modality = str(ds.get("Modality") or "")
            uids = [str(ds.get(k) or "") for k in ("StudyInstanceUID", "SeriesInstanceUID")]
            uids.append(str(ds.get("SOPInstanceUID") or ""))
        except Exception:  # the foreign message may quote the document's values
            raise InvalidInput(
                f"predecessor document {index} is not a readable DICOM Part 10 object"
            ) from None
        if not sop_class.startswith(_SR_STORAGE_PREFIX) or modality != "SR":
            raise InvalidInput(
                f"predecessor document {index} is not a DICOM SR (an SR storage SOP class and "
                "Modality SR)"
            )
        if not all(uids):
            raise InvalidInput(
                f"predecessor document {index} lacks its Study, Series or SOP Instance UID"
            )
        studies.append(uids[0])
    return studies


def check_predecessor_study(documents: Sequence[bytes], study_uid: str) -> None:
    """Every predecessor document is of the study (its StudyInstanceUID) being analysed."""
    for index, study in enumerate(predecessor_studies(documents)):
        if study != study_uid:
            raise InvalidInput(
                f"predecessor document {index} is of another study than the one analysed"
            )


class Policy(Protocol):
    """What a client may do, and whether it may speak for an origin
    (services/gateway/policy.py)."""

    def accept_origin(self, client: str, origin: Origin) -> Origin: ...

    def admit(
        self,
        client: str,
        priority: RequestPriority,
        pipeline: str = "",
        origin: Origin | None = None,
    ) -> None: ...

    def allow_pipeline(self, client: str, pipeline: str, origin: Origin | None = None) -> None: ...


@dataclass(frozen=True)
class Limits:
    """What one study may be: the gateway's (``from_settings``), or once its pipeline is known
    the tighter of those and the pipeline's own (:meth:`of`); checked with one wording whether
    the study came whole (Analyze) or in chunks (AnalyzeStream)."""

    max_instances: int
    max_study_bytes: int
    max_decoded_bytes: int  # all its instances' decoded pixels
    # The pipeline whose own limit is the tighter one, per limit; "": the gateway's applies.
    instances_set_by: str = ""
    bytes_set_by: str = ""

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Limits:
        return cls(
            settings.max_instances, settings.max_study_bytes, settings.max_study_decoded_bytes
        )

    def of(self, pipeline: Pipeline) -> Limits:
        """The limits of a study for ``pipeline``: its spec's ``limits`` where they are tighter;
        the gateway's are the ceiling (a pipeline cannot raise them)."""
        own = pipeline.limits
        limits = self
        if own.max_instances is not None and own.max_instances < limits.max_instances:
            limits = dataclasses.replace(
                limits, max_instances=own.max_instances, instances_set_by=pipeline.name
            )
        if own.max_study_bytes is not None and own.max_study_bytes < limits.max_study_bytes:
            limits = dataclasses.replace(
                limits, max_study_bytes=own.max_study_bytes, bytes_set_by=pipeline.name
            )
        return limits

    def check_instances(self, count: int) -> None:
        if count > self.max_instances:
            raise TooLarge(
                f"study has {count} instances; the limit is {self.max_instances}"
                + _set_by(self.instances_set_by, "max_instances")
            )

    def check_bytes(self, total: int) -> None:
        if total > self.max_study_bytes:
            raise TooLarge(
                f"study is {total} bytes; the limit is {self.max_study_bytes}"
                + _set_by(self.bytes_set_by, "max_study_bytes")
            )

    def check_study(self, instances: Sequence[bytes]) -> None:
        self.check_instances(len(instances))
        self.check_bytes(sum(len(i) for i in instances))


def _set_by(pipeline: str, limit: str) -> str:
    return f" (pipeline {pipeline!r}: its limits.{limit})" if pipeline else ""


class _Budget:
    """Decoded bytes of one study, checked as each instance comes back: the first one over
    the limit fails the study, which cancels the decodes still running."""

    def __init__(self, limit: int) -> None:
        self._limit, self._spent = limit, 0

    def spend(self, image: Decoded) -> Decoded:
        self._spent += decoded_bytes(image)
        if self._spent > self._limit:
            raise TooLarge(
                f"the study decodes to more than {self._limit:,} bytes of pixels "
                "(IMAGING_MAX_STUDY_DECODED_BYTES); send fewer or smaller instances"
            )
        return image


class Admission:
    """At most ``running`` studies at once and ``queued`` waiting for a slot; beyond that a
    study is refused at once (Overloaded) instead of waiting without bound, each waiter holding
    its upload in memory. Under overload the inner services then see a steady load, not every
    caller at once."""

    def __init__(self, running: int, queued: int, per_client: int) -> None:
        self._running, self._queued, self._per_client = running, queued, per_client
        self._slots = asyncio.Semaphore(running)
        self._waiting = 0
        self._held: dict[str, int] = {}  # studies running or waiting, per client

    @asynccontextmanager
    async def slot(self, client: str = "") -> AsyncIterator[None]:
        """A study slot; ``per_client`` (0: no cap) bounds what one client holds, running and
        waiting together, so one caller's slow uploads cannot take every slot."""
        if self._slots.locked() and self._waiting >= self._queued:
            raise Overloaded(
                f"the gateway is at capacity ({self._running} studies running, "
                f"{self._waiting} waiting); retry later"
            )
        held = self._held.get(client, 0)
        if self._per_client and held >= self._per_client:
            raise RateLimited(
                f"this client already holds {held} studies, the most one client may "
                "(IMAGING_MAX_STUDIES_PER_CLIENT); retry when one finishes"
            )
        self._held[client] = held + 1
        try:
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
            try:
                yield
            finally:
                self._slots.release()
        finally:
            left = self._held[client] - 1
            if left:
                self._held[client] = left
            else:
                del self._held[client]


class StudyAnalyzer:
    """Decode (in parallel) -> route -> preprocess (in parallel) -> infer -> postprocess."""

    def __init__(
        self,
        registry: PipelineRegistry,
        decoder: Decoder,
        preprocessor: Preprocessor,
        inference: InferenceServer,
        postprocessor: Postprocessor,
        limits: Limits,
        fan_out: int,
        policy: Policy | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.registry = registry
        self._decoder = decoder
        self._preprocessor = preprocessor
        self._inference = inference
        self._postprocessor = postprocessor
        self.limits = limits
        self._fan_out = fan_out  # inner calls in flight per study
        # No policy: everyone may do everything, but assert an origin (PolicyBook(None)).
        self._policy: Policy = policy if policy is not None else PolicyBook(None)
        self._reporter = reporter

    def check_limits(self, instances: Sequence[bytes]) -> None:
        if not instances:
            raise InvalidInput("the request contains no DICOM instances")
        self.limits.check_study(instances)
        for index, instance in enumerate(instances):
            if not instance:
                raise InvalidInput(f"instance {index} is empty")

    def receiving_limits(self, request: StudyRequest) -> Limits:
        """The limits a study is received under: its named pipeline's where it names one
        (an admitted request: the name exists), the gateway's while routing will tell."""
        if request.pipeline:
            return self.limits.of(self.registry.get(request.pipeline))
        return self.limits

    def admit(self, request: StudyRequest) -> StudyRequest:
        """What can be refused from the request's header alone, before its study takes a slot
        or any of its instances is buffered: an origin the client may not assert or that is
        malformed, a malformed uid_seed, predecessor documents that are not SRs (or too many,
        or too large), the client's (or origin's) policy and rate limit, and a named pipeline
        that does not exist. Returns the request as admitted (its origin
        checked and normalised), which is what is to be analysed."""
        origin = request.origin
        if origin is not None:
            origin = self._policy.accept_origin(request.client, origin)
            # Audited from here on, the refusals its own policy makes included.
            auditing.note(origin_ae=origin.calling_ae_title, origin_address=origin.source_address)
        if request.uid_seed and not UID_SEED.fullmatch(request.uid_seed):
            raise InvalidInput("uid_seed must be 1 to 128 of A-Z a-z 0-9 . _ : -")
        # Their study is judged once the study's own is known (after decoding).
        predecessor_studies(request.predecessors)
        self._policy.admit(request.client, request.priority, request.pipeline, origin)
        if request.pipeline:
            self.registry.get(request.pipeline)
        return dataclasses.replace(request, origin=origin)

    async def analyze(self, request: StudyRequest, *, admitted: bool = False) -> StudyResult:
        """The study's result; ``admitted``: this request is what :meth:`admit` returned (it is
        not run again, which would take a second rate-limit token)."""
        if not admitted:
            request = self.admit(request)
        self.check_limits(request.instances)
        seconds: dict[str, float] = {}
        options = request.options
        if options.documents and self._reporter is None:
            raise Misconfiguration("this gateway was started without a report builder")
        with stage_timer(Service.GATEWAY, Stage.TOTAL, seconds):
            try:
                assessment, pipeline, prepared = await self._run(request, seconds)
            except StudyRefused as refused:
                if not options.report_refusal:
                    raise
                return await self._refused(request, refused)
            for warning in prepared.warnings:
                log.warning("pipeline %s: %s", pipeline.name, warning)
            result = StudyResult(
                request_id=request.request_id,
                pipeline=pipeline.name,
                model=ModelRef(pipeline.model.name, pipeline.model.version),
                assessment=_as_asked(assessment, options),
                timings_ms={},
                warnings=[*prepared.warnings, *_outputs_not_made(pipeline, options)],
            )
            if options.documents and self._reporter is not None:
                with stage_timer(Service.GATEWAY, Stage.REPORT, seconds):
                    # The documents need the heatmaps and masks even when the caller did not
                    # ask for them in the response.
                    full = dataclasses.replace(result, assessment=assessment)
                    outputs = await asyncio.to_thread(
                        _with_predecessors(self._reporter.outputs, request.predecessors),
                        request.instances,
                        full,
                        options,
                        uid_seed=request.uid_seed,
                    )
                result = dataclasses.replace(result, outputs=outputs)
        return dataclasses.replace(
            result, timings_ms={stage: s * 1e3 for stage, s in seconds.items()}
        )

    async def _refused(self, request: StudyRequest, refused: StudyRefused) -> StudyResult:
        """A refusal as an answer (OutputOptions.report_refusal), with the documents asked
        for saying why."""
        outputs: list[EncodedObject] = []
        refusal = Refusal(refused.kind, refused.reason)
        auditing.note(findings=[AuditFinding("", 0.0, f"refused: {refused.kind}")])
        if self._reporter is not None and (request.options.dicom_sr or request.options.fhir):
            outputs = await asyncio.to_thread(
                _with_predecessors(self._reporter.refusal, request.predecessors),
                request.instances,
                request.pipeline,
                refusal,
                request.options,
                uid_seed=request.uid_seed,
            )
        return StudyResult(
            request_id=request.request_id,
            pipeline=request.pipeline,
            model=ModelRef("", ""),
            assessment=Assessment([], TriagePriority.ROUTINE),
            outputs=outputs,
            refusal=refusal,
        )

    async def _run(
        self, request: StudyRequest, seconds: dict[str, float]
    ) -> tuple[Assessment, Pipeline, Preprocessed]:
        rid = request.request_id
        # Name the pipeline first so an unknown name fails before any decoding work.
        named: Pipeline | None = self.registry.get(request.pipeline) if request.pipeline else None
        if named is not None:  # and its own limits before any decoding work too
            self.limits.of(named).check_study(request.instances)
        budget = _Budget(self.limits.max_decoded_bytes)

        async def decode(dicom: bytes) -> Decoded:
            return budget.spend(await self._decoder.decode(dicom, rid))

        with stage_timer(Service.GATEWAY, Stage.DECODE, seconds):
            images = await _all([decode(d) for d in request.instances], self._fan_out)
        attributes = [i.attributes for i in images]
        if request.predecessors:  # before a refusal could name them as its predecessors
            check_predecessor_study(request.predecessors, attributes[0].study_instance_uid)
        # A named pipeline overrides the routing tags only (PipelineRegistry.override); which
        # ones is audited by keyword and told to the caller in the answer's warnings.
        overridden: list[str] = []
        if named is not None:
            auditing.note(pipeline_named=True)
            overridden = self.registry.override(named, attributes)
        pipeline = named if named is not None else self.registry.route(attributes)
        auditing.note(
            pipeline=pipeline.name,
            study_uid=attributes[0].study_instance_uid,
            routing_overridden=overridden,
        )
        # A routed pipeline too: the client's (or origin's) policy, the pipeline's limits.
        self._policy.allow_pipeline(request.client, pipeline.name, request.origin)
        if named is None:
            self.limits.of(pipeline).check_study(request.instances)
        caveats = _intended_use(pipeline, images)
        with stage_timer(Service.GATEWAY, Stage.PREPROCESS, seconds):
            prepared = await self._preprocess(pipeline, images, rid)
        if overridden:
            warning = _override_warning(pipeline, overridden)
            prepared = dataclasses.replace(prepared, warnings=[warning, *prepared.warnings])
        model = pipeline.model
        with stage_timer(Service.GATEWAY, Stage.INFER, seconds):
            outputs = await self._inference.infer(
                model.name,
                model.version,
                model.input,
                prepared.batch,
                _outputs_needed(pipeline, request.options.inner().heatmaps),
                request.priority.triton_priority,
                rid,
            )
        uids = (
            (prepared.grid.series_instance_uid,)
            if prepared.grid is not None
            else tuple(i.attributes.sop_instance_uid for i in images)
        )
        inner = request.options.inner()
        job = PostprocessJob(
            pipeline.name,
            outputs,
            uids,
            tuple(prepared.geometries),
            prepared.grid,
            heatmaps=inner.heatmaps,
            masks=inner.masks,
            caveats=tuple(caveats),
        )
        with stage_timer(Service.GATEWAY, Stage.POSTPROCESS, seconds):
            assessment = await self._postprocessor.postprocess(job, rid)
        auditing.note(
            findings=[
                AuditFinding(f.concept.code, f.probability, str(f.status).lower())
                for f in assessment.findings
            ]
        )
        return assessment, pipeline, prepared

    async def _preprocess(
        self, pipeline: Pipeline, images: list[Decoded], rid: str
    ) -> Preprocessed:
        if pipeline.kind == "volume":  # the series is one model input
            return await self._preprocessor.preprocess(pipeline.name, images, rid)
        # One call per image keeps each message the size of one image and spreads the work
        # over preprocessor replicas; the batch is assembled here.
        parts = await _all(
            [self._preprocessor.preprocess(pipeline.name, [i], rid) for i in images], self._fan_out
        )
        return Preprocessed(
            join_batches([p.batch for p in parts], pipeline.name),
            [g for p in parts for g in p.geometries],
            warnings=[w for p in parts for w in p.warnings],
        )

    async def card(self, pipeline: Pipeline) -> ModelCard | None:
        """The model's card from its served config; None while the server cannot say."""
        if not isinstance(self._inference, ModelMetadata):
            return None
        try:
            parameters = await self._inference.model_parameters(
                pipeline.model.name, pipeline.model.version
            )
        except DependencyUnavailable:
            return None
        return card_from_parameters(pipeline.model.name, pipeline.model.version, parameters)


def _with_predecessors(build: Callable[..., T], predecessors: Sequence[bytes]) -> Callable[..., T]:
    """``build`` (a Reporter method) naming the predecessor documents, where there are any."""
    return functools.partial(build, predecessors=predecessors) if predecessors else build


def _outputs_not_made(pipeline: Pipeline, options: OutputOptions) -> list[str]:
    """A warning for each output the caller asked for that this pipeline cannot make, so that
    its absence is not read as "nothing found": heatmaps need a finding with a class activation
    map (FindingRule.heatmap_output), masks and DICOM Segmentations a measurement that keeps
    its mask (MeasurementRule.segmentation_label)."""
    rules = pipeline.postprocess
    heatmaps = any(rule.heatmap_output for rule in rules.findings)
    masks = any(rule.segmentation_label for rule in rules.measurements)
    why_heatmaps = "none of its findings has a class activation map" + (
        " (a volume pipeline: its results are measurements)" if pipeline.kind == "volume" else ""
    )
    why_masks = "none of its results is a segmentation" + (
        " (an image pipeline: its results are findings per image)"
        if pipeline.kind == "image"
        else ""
    )
    asked = (
        (options.heatmaps, heatmaps, "heatmaps", why_heatmaps),
        (options.dicom_heatmap, heatmaps, "DICOM heatmap images", why_heatmaps),
        (options.masks, masks, "masks", why_masks),
        (options.dicom_seg, masks, "a DICOM Segmentation", why_masks),
    )
    return [
        f"{what} asked for, but pipeline {pipeline.name!r} cannot make any: {why}; none is returned"
        for wanted, possible, what, why in asked
        if wanted and not possible
    ]


def _as_asked(assessment: Assessment, options: OutputOptions) -> Assessment:
    """Without the heatmaps and masks computed only for the documents."""
    findings = assessment.findings
    if not options.heatmaps:
        findings = [dataclasses.replace(f, heatmap_png=b"") for f in findings]
    masks = assessment.segmentations if options.masks else []
    return dataclasses.replace(assessment, findings=findings, segmentations=masks)


def _override_warning(pipeline: Pipeline, tags: Sequence[str]) -> str:
    """What the caller is told when naming the pipeline overrode its routing tags: keywords
    and the pipeline's own rule only, never a value read from the study."""
    return (
        f"pipeline {pipeline.name!r} was named by the caller: the study's {', '.join(tags)} "
        f"did not match its routing rule ({pipeline.match.describe()}), which the name "
        "overrides; its intended-use checks applied as for a routed study"
    )


def _intended_use(pipeline: Pipeline, images: Sequence[Decoded]) -> list[Caveat]:
    """The images' caveats against the pipeline's intended use, before any inference work:
    refused (OutsideIntendedUse) when the pipeline says so, else handed to postprocessing."""
    if pipeline.intended_use is None:
        return []
    found: list[Caveat] = []
    for image in images:
        _, rows, columns, _ = image.pixels.shape
        caveats, refuse = pipeline.intended_use.judge(image.attributes, rows, columns)
        if refuse:
            reasons = "; ".join(
                sorted({c.detail.removeprefix("outside intended use: ") for c in caveats})
            )
            raise OutsideIntendedUse(
                f"pipeline {pipeline.name!r}: outside intended use: {reasons} "
                f"(intended population: {pipeline.intended_use.population})"
            )
        found.extend(caveats)
    if pipeline.kind == "volume":  # one caveat of each kind for the series, not per slice
        series = images[0].attributes.series_instance_uid
        unique = {(c.reason, c.detail): c for c in found}
        return [Caveat(reason, detail, series) for reason, detail in unique]
    return found


async def _all(calls: Sequence[Awaitable[T]], limit: int) -> list[T]:
    """Every call's result in order, at most ``limit`` in flight. The first failure (or a
    cancellation) cancels the calls still running, which are awaited before it propagates, so
    no inner work outlives the study."""
    slots = asyncio.Semaphore(limit)

    async def bounded(call: Awaitable[T]) -> T:
        try:
            async with slots:
                return await call
        finally:
            if inspect.iscoroutine(call):
                call.close()  # cancelled while queued: it never started

    tasks = [asyncio.ensure_future(bounded(call)) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _outputs_needed(pipeline: Pipeline, heatmaps: bool) -> list[str]:
    """The model outputs to ask Triton for: class activation maps only when heatmaps are."""
    maps = {rule.heatmap_output for rule in pipeline.postprocess.findings}
    return [name for name in pipeline.model.outputs if heatmaps or name not in maps]


class InstanceAssembler:
    """Joins streamed chunks into instances, enforcing order and limits as bytes arrive, so an
    oversized stream is refused without buffering all of it."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._parts: list[bytearray] = []
        self._total = 0

    def add(self, index: int, data: bytes) -> None:
        parts = self._parts
        if index == len(parts):
            self._limits.check_instances(index + 1)
            parts.append(bytearray())
        elif index != len(parts) - 1:
            raise InvalidInput(
                f"chunk for instance {index} arrived out of order (expected "
                f"{len(parts) - 1} or {len(parts)})"
            )
        self._total += len(data)
        self._limits.check_bytes(self._total)
        parts[index] += data

    def instances(self) -> list[bytes]:
        """The assembled instances, handed over without a copy (each is buffered once)."""
        parts, self._parts = self._parts, []
        return parts  # type: ignore[return-value]  # bytearrays: the buffer protocol suffices
