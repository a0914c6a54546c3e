"""IMAGING_DESTINATIONS_FILE (services/ingest/destinations.py): the minimal file of the issue
works as written, rules route documents and identity, mistakes stop the start with a reason,
and the default failure table sorts peers' answers into retry and dead letter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from services.ingest.destinations import Destinations, FailureTable, RetryPolicy

MINIMAL = """
destinations:
  pacs: {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - {destinations: [pacs], documents: [sr, seg]}
"""


def _load(text: str) -> Destinations:
    return Destinations.model_validate(yaml.safe_load(text))


def test_the_minimal_file_works_as_written(tmp_path: Path) -> None:
    path = tmp_path / "destinations.yaml"
    path.write_text(MINIMAL)
    spec = Destinations.load(path)
    assert spec.route("cxr_pneumonia", "CT_1", refused=False) == {"pacs": {"dicom_sr", "dicom_seg"}}
    # Refusals go only where a rule says so; nothing names the patient by default.
    assert spec.route("cxr_pneumonia", "CT_1", refused=True) == {}
    assert spec.identity("cxr_pneumonia", "CT_1", refused=False) == set()
    pacs = spec.destinations["pacs"]
    assert pacs.type == "dicom" and pacs.storage_commitment
    assert Destinations.load(None).route("x", "y", refused=False) == {}  # no default destination


def test_rules_by_pipeline_caller_refusal_and_identity() -> None:
    spec = _load(
        """
destinations:
  pacs: {type: dicom, ae_title: ORTHANC, host: 10.0.0.5, port: 104}
  ehr: {type: fhir, url: "https://fhir.example.org/R4"}
rules:
  - {destinations: [pacs], documents: [sr, heatmap], calling_ae_titles: [CT_1], refusals: true}
  - {destinations: [ehr], documents: [fhir], pipelines: [cxr_pneumonia], identity: true}
"""
    )
    assert spec.route("cxr_pneumonia", "CT_1", refused=False) == {
        "pacs": {"dicom_sr", "dicom_heatmap"},
        "ehr": {"fhir"},
    }
    assert spec.route("us_breast", "CT_2", refused=False) == {}
    assert spec.route("us_breast", "CT_1", refused=True) == {"pacs": {"dicom_sr", "dicom_heatmap"}}
    assert spec.identity("cxr_pneumonia", "CT_9", refused=False) == {"ehr"}
    assert spec.identity("us_breast", "CT_9", refused=False) == set()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("rules: [{destinations: [nowhere], documents: [sr]}]", "unknown destination"),
        (
            "destinations: {pacs: {type: dicom, ae_title: A, host: h, port: 1}}\n"
            "rules: [{destinations: [pacs], documents: [fhir]}]",
            "cannot take fhir",
        ),
        (
            "destinations: {ehr: {type: fhir, url: 'http://e'}}\n"
            "rules: [{destinations: [ehr], documents: [sr]}]",
            "cannot take sr",
        ),
        (
            "destinations: {pacs: {type: dicom, ae_title: A, host: h, port: 1}}\n"
            "rules: [{destinations: [pacs], documents: [sr], identity: true}]",
            "identity applies to FHIR destinations only",
        ),
        ("destinations: {pacs: {type: dicom, ae_title: 'A\\\\B', host: h, port: 1}}", "AE title"),
        ("destinations: {Bad.Name: {type: fhir, url: 'http://e'}}", "destination name"),
        (
            "destinations: {ehr: {type: fhir, url: 'http://e', auth: {username: u}}}",
            "basic needs both",
        ),
    ],
)
def test_mistakes_stop_the_start_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        _load(text)


def test_the_default_failure_table() -> None:
    table = FailureTable()
    transient = ["dimse:0xA700", "dimse:0xA7FF", "http:503", "http:429", "timeout", "connection"]
    permanent = ["dimse:0xA900", "dimse:0xC211", "dimse:0x0122", "http:404", "http:400"]
    assert [table.is_permanent(f) for f in transient] == [False] * len(transient)
    assert [table.is_permanent(f) for f in permanent] == [True] * len(permanent)
    assert not table.is_permanent("something-new")  # unknown: retried, within its bounds
    # The most specific pattern wins either way.
    assert FailureTable(transient=["http:409"]).is_permanent("http:409") is False


def test_the_default_retries_span_a_day() -> None:
    policy = RetryPolicy()
    waited = sum(policy.delay(attempt) for attempt in range(1, policy.max_attempts))
    assert 20 * 3600 < waited < 28 * 3600
    assert policy.delay(1) == 5.0 and policy.delay(50) == 900.0
