"""The ingest's decisions, pure: a study's state machine, when it is complete, which series a
pipeline gets, and the key a result is stored under. No I/O here (the receiver, the worker and
the state engine call these), so every rule is unit-tested without NATS, DICOM or gRPC.

A study's life (each transition is one compare-and-set of its record in the state engine)::

    RECEIVING --quiet period / close--> COMPLETE --job queued--> QUEUED --worker--> ANALYSING
    ANALYSING --> DONE | REFUSED | FAILED | DEAD_LETTERED
    any state after RECEIVING --instance arrives--> RECEIVING (generation + 1: a new analysis)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from services.common.errors import NoMatchingPipeline
from services.common.images import ImageAttributes
from services.common.pipelines import Pipeline, PipelineRegistry


class StudyState(StrEnum):
    """The proto's StudyState without its prefix (services/ingest/servicer.py maps them)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    QUEUED = "queued"
    ANALYSING = "analysing"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


# States in which a stored result (or a final verdict) exists for the record's generation.
FINISHED = frozenset(
    {StudyState.DONE, StudyState.REFUSED, StudyState.FAILED, StudyState.DEAD_LETTERED}
)


class NotAnalysed(BaseModel):
    model_config = ConfigDict(frozen=True)

    series_instance_uid: str
    sop_class_uid: str
    modality: str
    instances: int
    reason: str


class StudyRecord(BaseModel):
    """What the state engine keeps per study (JSON in a key-value bucket, keyed by its UID)."""

    model_config = ConfigDict(frozen=True)

    study_uid: str
    state: StudyState = StudyState.RECEIVING
    generation: int = 1
    instances: int = 0
    calling_ae: str = ""
    source_address: str = ""
    quiet_seconds: float = 30.0
    first_received: float = 0.0
    last_received: float = 0.0
    completed: float = 0.0
    completion_reason: str = ""
    finished: float = 0.0
    pipeline: str = ""
    result_key: str = ""
    # Every result stored for the study, oldest first (one per generation that was analysed).
    results: tuple[str, ...] = ()
    analysed_instances: int = 0
    not_analysed: tuple[NotAnalysed, ...] = ()
    error: str = ""
    attempts: int = 0

    def received(
        self,
        now: float,
        calling_ae: str,
        address: str,
        instances: int,
        quiet: float,
        new: bool = True,
    ) -> StudyRecord:
        """An instance was stored; one arriving after completion re-opens the study. A copy
        of one already stored (``new`` False: a PACS re-sending the study) re-opens it only if
        the spool holds instances the record has not counted (a receiver that died between
        storing and recording one): otherwise nothing changed that an analysis would see."""
        if not new and self.state != StudyState.RECEIVING and instances == self.instances:
            return self
        changes: dict[str, object] = {
            "instances": instances,
            "last_received": now,
            "calling_ae": calling_ae,
            "source_address": address,
            "quiet_seconds": quiet,
        }
        if self.state != StudyState.RECEIVING:
            changes.update(
                state=StudyState.RECEIVING,
                generation=self.generation + 1,
                completed=0.0,
                completion_reason="",
                finished=0.0,
                error="",
                attempts=0,
            )
        return self.model_copy(update=changes)

    def quiet_until(self) -> float:
        return self.last_received + self.quiet_seconds

    def complete(self, now: float, reason: str) -> StudyRecord:
        return self.model_copy(
            update={"state": StudyState.COMPLETE, "completed": now, "completion_reason": reason}
        )

    def to(self, state: StudyState, **changes: object) -> StudyRecord:
        return self.model_copy(update={"state": state, **changes})


class ExportState(StrEnum):
    PENDING = "pending"  # queued, not yet tried
    RETRYING = "retrying"  # failed transiently; the next attempt waits its back-off
    DELIVERED = "delivered"  # the destination has it (and committed it, where asked)
    DEAD_LETTERED = "dead_lettered"  # failed for good, or out of attempts or time
    DROPPED = "dropped"  # an operator dropped it (`exports drop`)


# Triage priorities (findings.proto TriagePriority names) -> the export rank taken first.
TRIAGE_RANKS = {"STAT": 0, "URGENT": 1, "ROUTINE": 2}


def export_rank(triage: str) -> int:
    return TRIAGE_RANKS.get(triage.removeprefix("TRIAGE_PRIORITY_"), 2)


class ExportRecord(BaseModel):
    """One result's delivery to one destination, as `imaging-platform exports` shows it."""

    model_config = ConfigDict(frozen=True)

    destination: str
    result_key: str
    study_uid: str
    kinds: tuple[str, ...]
    rank: int = 2
    triage: str = ""
    supersedes: str = ""
    # A rule lets this destination name the patient (read from the study's instances when
    # sent, never stored here: the engine holds no identity).
    identity: bool = False
    state: ExportState = ExportState.PENDING
    attempts: int = 0
    created: float = 0.0
    updated: float = 0.0
    failure: str = ""  # the last failure's reason
    status: str = ""  # its status, e.g. dimse:0xA700, http:503, unconfirmed
    receipt: str = ""
    retries: int = 0  # times an operator asked for a retry (`exports retry`)

    @property
    def key(self) -> str:
        return export_key(self.destination, self.result_key)

    def to(self, state: ExportState, now: float, **changes: object) -> ExportRecord:
        return self.model_copy(update={"state": state, "updated": now, **changes})


def export_key(destination: str, result_key: str) -> str:
    return f"{destination}.{result_key}"


def new_study(study_uid: str, now: float) -> StudyRecord:
    return StudyRecord(study_uid=study_uid, first_received=now)


def quiet_reason(record: StudyRecord) -> str:
    who = record.calling_ae or "the caller"
    return f"quiet period: no instance from {who} for {record.quiet_seconds:g} s"


def due(record: StudyRecord, now: float) -> bool:
    """Whether a receiving study's quiet period has passed."""
    return record.state == StudyState.RECEIVING and now >= record.quiet_until()


@dataclass(frozen=True)
class InstanceFacts:
    """The header facts the worker chooses series by (read from the stored file)."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str
    body_part_examined: str
    view_position: str
    has_pixels: bool
    instance_number: int
    size: int
    sha256: str
    name: str  # the file's name in the study's folder
    study_instance_uid: str = ""

    def attributes(self) -> ImageAttributes:
        return ImageAttributes(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            series_instance_uid=self.series_instance_uid,
            modality=self.modality,
            body_part_examined=self.body_part_examined,
            view_position=self.view_position,
        )


@dataclass(frozen=True)
class Plan:
    """What one study's analysis sends: one pipeline, the instances it accepts; the rest not
    analysed with the reason. ``pipeline`` None: nothing in the study can be analysed."""

    pipeline: Pipeline | None
    instances: tuple[InstanceFacts, ...]
    not_analysed: tuple[NotAnalysed, ...]
    reason: str = ""
    series: tuple[str, ...] = field(default=())


def _series(facts: Iterable[InstanceFacts]) -> dict[str, list[InstanceFacts]]:
    grouped: dict[str, list[InstanceFacts]] = {}
    for fact in facts:
        grouped.setdefault(fact.series_instance_uid, []).append(fact)
    for members in grouped.values():
        members.sort(key=lambda f: (f.instance_number, f.sop_instance_uid))
    return grouped


def _not_analysed(members: Sequence[InstanceFacts], reason: str) -> NotAnalysed:
    first = members[0]
    return NotAnalysed(
        series_instance_uid=first.series_instance_uid,
        sop_class_uid=first.sop_class_uid,
        modality=first.modality,
        instances=len(members),
        reason=reason,
    )


def choose(facts: Sequence[InstanceFacts], registry: PipelineRegistry) -> Plan:
    """One pipeline per study, and the series it accepts.

    Each series is routed on its own (a localizer, a dose report and a reconstruction are each
    judged apart). The pipeline accepting the most instances wins (ties: by name); an image
    pipeline gets every series it accepts, a volume pipeline the largest one (a volume is one
    series). Everything else is recorded as not analysed, with the reason."""
    candidates: dict[str, tuple[Pipeline, list[str]]] = {}
    skipped: list[NotAnalysed] = []
    grouped = _series(facts)
    for uid, members in sorted(grouped.items()):
        if not all(m.has_pixels for m in members):
            without = [m for m in members if not m.has_pixels]
            skipped.append(_not_analysed(without, "no pixel data: not an image"))
            members = [m for m in members if m.has_pixels]
            grouped[uid] = members
            if not members:
                continue
        try:
            pipeline = registry.route([m.attributes() for m in members])
        except NoMatchingPipeline as err:
            skipped.append(_not_analysed(members, str(err)))
            continue
        candidates.setdefault(pipeline.name, (pipeline, []))[1].append(uid)
    if not candidates:
        return Plan(None, (), tuple(skipped), "no pipeline accepts any series of the study")

    def weight(name: str) -> tuple[int, str]:
        _, uids = candidates[name]
        return (-sum(len(grouped[u]) for u in uids), name)

    winner = min(candidates, key=weight)
    pipeline, uids = candidates[winner]
    if pipeline.kind == "volume":
        uids.sort(key=lambda u: (-len(grouped[u]), u))
        for extra in uids[1:]:
            skipped.append(
                _not_analysed(
                    grouped[extra], f"{winner} analyses one series per study (a larger one)"
                )
            )
        uids = uids[:1]
    for loser, (_, others) in sorted(candidates.items()):
        if loser == winner:
            continue
        for uid in others:
            skipped.append(
                _not_analysed(grouped[uid], f"one result per study: {winner} analysed other series")
            )
    chosen = tuple(m for uid in sorted(uids) for m in grouped[uid])
    return Plan(pipeline, chosen, tuple(skipped), series=tuple(sorted(uids)))


def instances_digest(instances: Iterable[InstanceFacts]) -> str:
    """The analysed instances, as their SOP UIDs and contents (order-free)."""
    lines = sorted(f"{i.sop_instance_uid} {i.sha256}" for i in instances)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def result_key(study_uid: str, digest: str, pipeline: str, model_version: str) -> str:
    """The key a result is stored under, and the seed of its documents' UIDs: the same study,
    instances, pipeline and served model version give the same key (a redelivered job finds
    its result; a re-sent export carries the same UIDs)."""
    material = "\n".join([study_uid, digest, pipeline, model_version])
    return hashlib.sha256(material.encode()).hexdigest()[:40]
