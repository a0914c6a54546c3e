"""The ingest's pure decisions (services/ingest/core.py): a study's state machine, when it is
due, which series a pipeline gets (against the repository's real pipeline registry), and the
digest and key a result is stored under."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.common.dicom import DECODABLE_TRANSFER_SYNTAXES
from services.common.pipelines import PipelineRegistry
from services.decoder.codecs import CHAINS
from services.ingest.core import (
    FINISHED,
    InstanceFacts,
    StudyRecord,
    StudyState,
    choose,
    due,
    instances_digest,
    new_study,
    quiet_reason,
    result_key,
)

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
MR = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
SR = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR Storage
STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture(scope="module")
def registry() -> PipelineRegistry:
    return PipelineRegistry.load(PIPELINES)


def fact(
    series: str,
    number: int,
    *,
    sop_class: str = DX,
    modality: str = "DX",
    body_part: str = "CHEST",
    view: str = "PA",
    pixels: bool = True,
    sha: str = "",
) -> InstanceFacts:
    sop = f"{series}.{number}"
    return InstanceFacts(
        sop_instance_uid=sop,
        series_instance_uid=series,
        sop_class_uid=sop_class,
        modality=modality,
        body_part_examined=body_part,
        view_position=view,
        has_pixels=pixels,
        instance_number=number,
        size=1000 + number,
        sha256=sha or f"{number:064x}",
        name=f"{sop}.dcm",
        study_instance_uid=STUDY,
    )


def series(uid: str, count: int, **kwargs: object) -> list[InstanceFacts]:
    return [fact(uid, n, **kwargs) for n in range(1, count + 1)]  # type: ignore[arg-type]


# -- the state machine ------------------------------------------------------------------------


def test_a_new_study_is_receiving_in_its_first_generation() -> None:
    record = new_study(STUDY, 100.0)
    assert record.state == StudyState.RECEIVING
    assert record.generation == 1
    assert record.first_received == 100.0
    assert record.instances == 0


def test_received_while_receiving_counts_without_a_new_generation() -> None:
    record = new_study(STUDY, 100.0).received(101.0, "CT_1", "10.0.0.7", 1, 30.0)
    again = record.received(105.0, "CT_1", "10.0.0.7", 2, 30.0)
    assert again.state == StudyState.RECEIVING
    assert again.generation == 1
    assert (again.instances, again.last_received) == (2, 105.0)
    assert (again.calling_ae, again.source_address, again.quiet_seconds) == (
        "CT_1",
        "10.0.0.7",
        30.0,
    )
    assert again.first_received == 100.0  # the first arrival is kept


def test_complete_records_its_reason_and_time() -> None:
    record = new_study(STUDY, 100.0).received(101.0, "CT_1", "10.0.0.7", 3, 30.0)
    done = record.complete(131.0, quiet_reason(record))
    assert done.state == StudyState.COMPLETE
    assert done.completed == 131.0
    assert done.completion_reason == "quiet period: no instance from CT_1 for 30 s"
    assert done.generation == 1
    assert record.state == StudyState.RECEIVING  # records are immutable values


@pytest.mark.parametrize(
    "state", sorted({StudyState.COMPLETE, StudyState.QUEUED, StudyState.ANALYSING} | FINISHED)
)
def test_an_instance_after_receiving_reopens_the_study_as_a_new_generation(
    state: StudyState,
) -> None:
    record = (
        new_study(STUDY, 100.0)
        .received(101.0, "CT_1", "10.0.0.7", 3, 30.0)
        .complete(131.0, "closed by the caller")
        .to(state, finished=140.0, error="gateway said no", attempts=3, result_key="ab12")
    )
    reopened = record.received(200.0, "CT_2", "10.0.0.8", 4, 60.0)
    assert reopened.state == StudyState.RECEIVING
    assert reopened.generation == 2
    assert (reopened.completed, reopened.completion_reason) == (0.0, "")
    assert (reopened.finished, reopened.error, reopened.attempts) == (0.0, "", 0)
    assert (reopened.instances, reopened.last_received, reopened.calling_ae) == (4, 200.0, "CT_2")
    # The earlier generation's result stays known (it was stored).
    assert reopened.result_key == "ab12"


def test_a_copy_of_a_stored_instance_reopens_only_when_the_spool_holds_more() -> None:
    done = (
        new_study(STUDY, 100.0)
        .received(101.0, "CT_1", "10.0.0.7", 3, 30.0)
        .complete(131.0, "closed by the caller")
        .to(StudyState.DONE, finished=140.0, result_key="ab12")
    )
    # A PACS re-sending the study: every copy a duplicate, nothing new to analyse.
    assert done.received(200.0, "CT_1", "10.0.0.7", 3, 30.0, new=False) is done
    # A duplicate while the spool holds an instance the record never counted (a receiver that
    # died after storing it): the study re-opens, so that instance is analysed.
    reopened = done.received(200.0, "CT_1", "10.0.0.7", 4, 30.0, new=False)
    assert (reopened.state, reopened.generation, reopened.instances) == (
        StudyState.RECEIVING,
        2,
        4,
    )
    # While receiving, a duplicate still counts as activity (the quiet period restarts).
    receiving = new_study(STUDY, 100.0).received(101.0, "CT_1", "10.0.0.7", 3, 30.0)
    touched = receiving.received(120.0, "CT_1", "10.0.0.7", 3, 30.0, new=False)
    assert (touched.last_received, touched.generation) == (120.0, 1)


def test_a_study_is_due_once_its_quiet_period_has_passed() -> None:
    record = new_study(STUDY, 100.0).received(110.0, "CT_1", "10.0.0.7", 1, 30.0)
    assert record.quiet_until() == 140.0
    assert not due(record, 139.9)
    assert due(record, 140.0)
    assert due(record, 1000.0)
    # Only a receiving study is ever due: a completed one is on its way already.
    assert not due(record.complete(140.0, "quiet"), 1000.0)
    assert not due(record.to(StudyState.DONE), 1000.0)


def test_records_survive_their_json_form() -> None:
    record = new_study(STUDY, 100.0).received(110.0, "CT_1", "10.0.0.7", 2, 30.0)
    record = record.to(StudyState.DONE, results=("k1", "k2"), pipeline="cxr_pneumonia")
    assert StudyRecord.model_validate_json(record.model_dump_json()) == record


# -- choosing series ---------------------------------------------------------------------------


def test_a_chest_radiograph_series_goes_to_the_pneumonia_pipeline(
    registry: PipelineRegistry,
) -> None:
    facts = series("1.2.3.1", 2)
    plan = choose(list(reversed(facts)), registry)
    assert plan.pipeline is not None
    assert plan.pipeline.name == "cxr_pneumonia"  # the ensemble is never routed to
    assert plan.instances == tuple(facts)  # in instance-number order
    assert plan.not_analysed == ()
    assert plan.series == ("1.2.3.1",)


def test_a_mixed_study_gets_one_pipeline_and_says_why_the_rest_was_not_analysed(
    registry: PipelineRegistry,
) -> None:
    chest = series("1.2.3.1", 2)
    report = series("1.2.3.2", 1, sop_class=SR, modality="SR", body_part="", pixels=False)
    abdomen = series("1.2.3.3", 3, sop_class=CT, modality="CT", body_part="ABDOMEN")
    plan = choose(chest + report + abdomen, registry)
    assert plan.pipeline is not None
    assert plan.pipeline.name == "cxr_pneumonia"
    assert plan.instances == tuple(chest)
    skipped = {n.series_instance_uid: n for n in plan.not_analysed}
    assert set(skipped) == {"1.2.3.2", "1.2.3.3"}
    assert skipped["1.2.3.2"].reason == "no pixel data: not an image"
    assert (skipped["1.2.3.2"].instances, skipped["1.2.3.2"].modality) == (1, "SR")
    assert skipped["1.2.3.3"].reason.startswith("no pipeline accepts this study")
    assert "Modality is 'CT'" in skipped["1.2.3.3"].reason
    assert (skipped["1.2.3.3"].instances, skipped["1.2.3.3"].sop_class_uid) == (3, CT)


def test_pixelless_instances_inside_an_image_series_are_left_out(
    registry: PipelineRegistry,
) -> None:
    images = series("1.2.3.1", 2)
    overlay = fact("1.2.3.1", 3, pixels=False)
    plan = choose([*images, overlay], registry)
    assert plan.pipeline is not None and plan.pipeline.name == "cxr_pneumonia"
    assert plan.instances == tuple(images)
    assert [(n.instances, n.reason) for n in plan.not_analysed] == [
        (1, "no pixel data: not an image")
    ]


def test_a_volume_pipeline_takes_the_largest_series(registry: PipelineRegistry) -> None:
    mr = {"sop_class": MR, "modality": "MR", "body_part": "HEAD", "view": ""}
    localizer = series("1.2.3.1", 3, **mr)
    t1 = series("1.2.3.2", 24, **mr)
    slab = series("1.2.3.3", 6, **mr)
    plan = choose(localizer + t1 + slab, registry)
    assert plan.pipeline is not None
    assert plan.pipeline.name == "mri_brain_extraction"
    assert plan.series == ("1.2.3.2",)
    assert plan.instances == tuple(t1)
    skipped = {n.series_instance_uid: n.reason for n in plan.not_analysed}
    assert set(skipped) == {"1.2.3.1", "1.2.3.3"}
    assert all("one series per study" in reason for reason in skipped.values())


def test_the_pipeline_accepting_most_instances_wins_the_study(registry: PipelineRegistry) -> None:
    chest = series("1.2.3.1", 1)
    head = series("1.2.3.2", 20, sop_class=MR, modality="MR", body_part="BRAIN", view="")
    plan = choose(chest + head, registry)
    assert plan.pipeline is not None and plan.pipeline.name == "mri_brain_extraction"
    assert [(n.series_instance_uid, n.reason) for n in plan.not_analysed] == [
        ("1.2.3.1", "one result per study: mri_brain_extraction analysed other series")
    ]


def test_a_study_nothing_accepts_has_no_pipeline_and_every_series_a_reason(
    registry: PipelineRegistry,
) -> None:
    report = series("1.2.3.2", 1, sop_class=SR, modality="SR", body_part="", pixels=False)
    knee = series("1.2.3.3", 2, modality="CR", body_part="KNEE")
    plan = choose(report + knee, registry)
    assert plan.pipeline is None
    assert plan.instances == ()
    assert plan.reason == "no pipeline accepts any series of the study"
    assert {n.series_instance_uid for n in plan.not_analysed} == {"1.2.3.2", "1.2.3.3"}


# -- digests and keys --------------------------------------------------------------------------


def test_the_instances_digest_ignores_order_and_follows_content() -> None:
    facts = series("1.2.3.1", 3)
    digest = instances_digest(facts)
    assert instances_digest(reversed(facts)) == digest
    assert len(digest) == 64 and int(digest, 16) >= 0
    changed = [facts[0], facts[1], dataclasses.replace(facts[2], sha256="f" * 64)]
    assert instances_digest(changed) != digest
    renamed = [facts[0], facts[1], dataclasses.replace(facts[2], sop_instance_uid="1.2.3.1.99")]
    assert instances_digest(renamed) != digest
    assert instances_digest(facts[:2]) != digest
    # What the digest is not about: where a file lies or how large it says it is.
    moved = [dataclasses.replace(f, name="x.dcm", size=1) for f in facts]
    assert instances_digest(moved) == digest


def test_the_result_key_is_stable_and_depends_on_every_part() -> None:
    parts = (STUDY, "d" * 64, "cxr_pneumonia", "2")
    key = result_key(*parts)
    assert result_key(*parts) == key
    assert len(key) == 40 and key.isalnum()
    for i in range(len(parts)):
        changed = list(parts)
        changed[i] = changed[i] + "1"
        assert result_key(*changed) != key, f"part {i} does not change the key"
    # Parts are separated: moving a character across a boundary is another key.
    assert result_key(STUDY + "1", "2" + "d" * 63, "cxr_pneumonia", "2") != result_key(
        STUDY, "12" + "d" * 63, "cxr_pneumonia", "2"
    )


def test_the_ingest_accepts_exactly_the_transfer_syntaxes_the_decoder_decodes() -> None:
    """services/common/dicom.py's DECODABLE_TRANSFER_SYNTAXES is what the DICOM receiver
    offers at association; every one must have a decoder chain, and every chain be offered."""
    assert set(CHAINS) == set(DECODABLE_TRANSFER_SYNTAXES)
    assert len(set(DECODABLE_TRANSFER_SYNTAXES)) == len(DECODABLE_TRANSFER_SYNTAXES)
