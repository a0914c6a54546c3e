"""A study's origin (AnalyzeRequest.origin): asserted only by a relay whose policy allows it,
checked without quoting it, judged by the ``dicom:<AE title>`` entry, audited; and uid_seed's
alphabet (services/gateway/policy.py, services/gateway/core.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.api.imaging.v1 import gateway_pb2
from services.cli.audit_verify import verify
from services.common import convert
from services.common.audit import AuditEvent, AuditKey, AuditLog
from services.common.errors import InvalidInput, PermissionDenied, RateLimited
from services.common.pipelines import PipelineRegistry
from services.common.results import Origin, RequestPriority, StudyRequest
from services.gateway import auditing
from services.gateway.auditing import CallFacts
from services.gateway.core import Limits, StudyAnalyzer
from services.gateway.policy import PolicyBook, checked_origin

REPO = Path(__file__).resolve().parents[2]
POLICY = """
ingest:
  assert_origin: true
  pipelines: [cxr_pneumonia, us_breast]
  rate: {per_second: 0.001, burst: 1}
reading-room:
  pipelines: [cxr_pneumonia]
"dicom:CT_ROOM_2":
  pipelines: [us_breast]
  max_priority: ROUTINE
  rate: {per_second: 0.001, burst: 2}
"""
CT1 = Origin("CT_ROOM_1", "10.1.2.3")
CT2 = Origin("CT_ROOM_2", "2001:db8::7")


@pytest.fixture
def book(tmp_path: Path) -> PolicyBook:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return PolicyBook.load(path)


# --- who may assert one ---------------------------------------------------------------------


def test_without_a_policy_file_nobody_may_assert_an_origin() -> None:
    with pytest.raises(PermissionDenied, match="no client policy file") as caught:
        PolicyBook.load(None).accept_origin("anyone", CT1)
    assert "assert_origin: true" in caught.value.reason


def test_only_a_client_with_assert_origin_may(book: PolicyBook) -> None:
    assert book.accept_origin("ingest", CT1) == CT1
    with pytest.raises(PermissionDenied, match="may not assert a study's origin"):
        book.accept_origin("reading-room", CT1)
    with pytest.raises(PermissionDenied, match="no policy"):
        book.accept_origin("stranger", CT1)


def test_a_client_that_may_not_assert_learns_nothing_about_a_bad_origin(book: PolicyBook) -> None:
    with pytest.raises(PermissionDenied):
        book.accept_origin("reading-room", Origin("BAD\\AE", "not an address"))


def test_an_origin_handed_to_admit_is_still_only_the_relays(book: PolicyBook) -> None:
    with pytest.raises(PermissionDenied, match="may not assert"):
        book.admit("reading-room", RequestPriority.DEFAULT, "", CT1)
    with pytest.raises(PermissionDenied, match="may not assert"):
        book.allow_pipeline("reading-room", "cxr_pneumonia", CT1)


# --- what a valid one is --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("CT1", "CT1"),
        ("  CT ROOM 1     ", "CT ROOM 1"),
        ("A" * 16, "A" * 16),
        ("x-y_z.@!", "x-y_z.@!"),
    ],
)
def test_an_ae_title_loses_its_padding(title: str, expected: str) -> None:
    assert checked_origin(Origin(title, "192.0.2.1")).calling_ae_title == expected


@pytest.mark.parametrize(
    "title",
    ["", "    ", "A" * 17, "BACK\\SLASH", "NEW\nLINE", "TAB\tAE", "NUL\x00", "ÉCHO", "X" * 100_000],
)
def test_a_bad_ae_title_is_invalid_and_never_quoted(title: str) -> None:
    with pytest.raises(InvalidInput, match="not a DICOM AE title") as caught:
        checked_origin(Origin(title, "192.0.2.1"))
    assert title.strip() == "" or title.strip()[:4] not in caught.value.reason
    assert len(caught.value.reason) < 200


@pytest.mark.parametrize("address", ["192.0.2.1", "10.0.0.255", "2001:db8::1", "::1"])
def test_ip_addresses_are_accepted_as_sent(address: str) -> None:
    assert checked_origin(Origin("CT1", address)).source_address == address


@pytest.mark.parametrize(
    "address",
    [
        "",
        "host.example",
        "192.0.2.256",
        "1.2.3.04",
        " 192.0.2.1",
        "fe80::1%eth0",
        "fe80::1%a\nb",
        "1" * 10_000,
    ],
)
def test_a_bad_source_address_is_invalid_and_never_quoted(address: str) -> None:
    with pytest.raises(InvalidInput, match="not an IP address") as caught:
        checked_origin(Origin("CT1", address))
    assert not address.strip() or address.strip()[:6] not in caught.value.reason


# --- whose rights apply ---------------------------------------------------------------------


def test_an_origin_with_its_own_entry_runs_under_it(book: PolicyBook) -> None:
    # The relay may run cxr_pneumonia, CT_ROOM_2's entry only us_breast.
    book.allow_pipeline("ingest", "cxr_pneumonia")
    with pytest.raises(PermissionDenied, match="studies from this origin may not run pipeline"):
        book.allow_pipeline("ingest", "cxr_pneumonia", CT2)
    book.allow_pipeline("ingest", "us_breast", CT2)
    with pytest.raises(PermissionDenied, match="this origin may ask for priority ROUTINE at most"):
        book.admit("ingest", RequestPriority.DEFAULT, "", CT2)


def test_an_origin_without_an_entry_runs_under_the_relays(book: PolicyBook) -> None:
    book.allow_pipeline("ingest", "cxr_pneumonia", CT1)
    with pytest.raises(PermissionDenied, match="studies from this origin may not run pipeline"):
        book.allow_pipeline("ingest", "mri_brain_extraction", CT1)
    book.admit("ingest", RequestPriority.URGENT, "", CT1)  # the relay's ceiling: URGENT


def test_the_rate_limit_counts_per_origin(book: PolicyBook) -> None:
    # The relay's bucket (burst 1) stands for itself and, apart, for each origin it relays
    # without an entry of its own; CT_ROOM_2 has its own (burst 2).
    book.admit("ingest", RequestPriority.DEFAULT)
    with pytest.raises(RateLimited):
        book.admit("ingest", RequestPriority.DEFAULT)
    book.admit("ingest", RequestPriority.DEFAULT, "", CT1)
    with pytest.raises(RateLimited):
        book.admit("ingest", RequestPriority.DEFAULT, "", CT1)
    book.admit("ingest", RequestPriority.DEFAULT, "", Origin("CT_ROOM_3", "10.1.2.4"))
    for _ in range(2):
        book.admit("ingest", RequestPriority.ROUTINE, "", CT2)
    with pytest.raises(RateLimited):
        book.admit("ingest", RequestPriority.ROUTINE, "", CT2)


# --- the gateway's core: admitted, normalised, audited --------------------------------------


def _analyzer(book: PolicyBook | None) -> StudyAnalyzer:
    """Only admit() is called: the peers are never reached."""
    registry = PipelineRegistry.load(REPO / "pipelines")
    none = object()
    return StudyAnalyzer(
        registry,
        none,  # type: ignore[arg-type]
        none,  # type: ignore[arg-type]
        none,  # type: ignore[arg-type]
        none,  # type: ignore[arg-type]
        Limits(8, 1000, 2**31),
        fan_out=1,
        policy=book,
    )


def _admit(analyzer: StudyAnalyzer, request: StudyRequest) -> tuple[StudyRequest, CallFacts]:
    facts = CallFacts()
    token = auditing._current.set(facts)
    try:
        return analyzer.admit(request), facts
    finally:
        auditing._current.reset(token)


def test_the_admitted_request_carries_the_checked_origin_and_notes_it(book: PolicyBook) -> None:
    sent = StudyRequest([], client="ingest", origin=Origin(" CT_ROOM_1  ", "10.1.2.3"))
    admitted, facts = _admit(_analyzer(book), sent)
    assert admitted.origin == CT1
    assert (facts.origin_ae, facts.origin_address) == ("CT_ROOM_1", "10.1.2.3")


def test_an_origin_is_noted_even_when_its_own_policy_refuses(book: PolicyBook) -> None:
    sent = StudyRequest([], client="ingest", pipeline="cxr_pneumonia", origin=CT2)
    facts = CallFacts()
    token = auditing._current.set(facts)
    try:
        with pytest.raises(PermissionDenied):
            _analyzer(book).admit(sent)
    finally:
        auditing._current.reset(token)
    assert facts.origin_ae == "CT_ROOM_2"


def test_the_core_refuses_an_origin_without_a_policy_and_from_a_plain_client(
    book: PolicyBook,
) -> None:
    for analyzer, client in ((_analyzer(None), ""), (_analyzer(book), "reading-room")):
        facts = CallFacts()
        token = auditing._current.set(facts)
        try:
            with pytest.raises(PermissionDenied):
                analyzer.admit(StudyRequest([], client=client, origin=CT1))
        finally:
            auditing._current.reset(token)
        assert facts.origin_ae == ""  # an origin not accepted is not recorded as one


def test_a_request_without_an_origin_is_admitted_as_before(book: PolicyBook) -> None:
    admitted, facts = _admit(_analyzer(book), StudyRequest([], client="reading-room"))
    assert admitted.origin is None and facts.origin_ae == ""
    admitted, _ = _admit(_analyzer(None), StudyRequest([], client=""))
    assert admitted.origin is None


@pytest.mark.parametrize("seed", ["a", "1.2.840.99:run-2_b", "S" * 128])
def test_any_client_may_set_a_uid_seed(book: PolicyBook, seed: str) -> None:
    admitted, _ = _admit(_analyzer(book), StudyRequest([], client="reading-room", uid_seed=seed))
    assert admitted.uid_seed == seed


@pytest.mark.parametrize("seed", ["S" * 129, "has space", "a/b", "naïve", "a\nb"])
def test_a_uid_seed_outside_its_alphabet_is_invalid(seed: str) -> None:
    with pytest.raises(InvalidInput, match="uid_seed must be 1 to 128") as caught:
        _admit(_analyzer(None), StudyRequest([], uid_seed=seed))
    assert seed not in caught.value.reason


# --- the wire and the audit record ----------------------------------------------------------


def test_the_request_and_the_stream_header_carry_origin_and_seed() -> None:
    origin = gateway_pb2.Origin(calling_ae_title="CT_ROOM_1", source_address="10.1.2.3")
    request = gateway_pb2.AnalyzeRequest(instances=[b"x"], origin=origin, uid_seed="s-1")
    header = gateway_pb2.AnalyzeHeader(origin=origin, uid_seed="s-1")
    for message in (request, header):
        study = convert.study_request(message, [b"x"], "rid", "ingest")
        assert (study.origin, study.uid_seed) == (CT1, "s-1")
    plain = convert.study_request(gateway_pb2.AnalyzeHeader(), [], "rid")
    assert (plain.origin, plain.uid_seed) == (None, "")
    # An origin with only one of its fields set is still an origin (and will be refused).
    half = gateway_pb2.AnalyzeHeader(origin=gateway_pb2.Origin(source_address="10.1.2.3"))
    assert convert.study_request(half, [], "rid").origin == Origin("", "10.1.2.3")


def test_the_audit_record_carries_the_origin_and_still_verifies(tmp_path: Path) -> None:
    key = AuditKey(b"k" * 40)
    path = tmp_path / "audit.jsonl"
    common = dict(
        client="ingest",
        peer="ipv4:127.0.0.1:1",
        method="AnalyzeStream",
        pipeline="cxr_pneumonia",
        model_name="cxr_pneumonia",
        model_version="2",
        instance_sha256=(),
        study_uid="1.2.3",
        findings=(),
        status="OK",
        latency_ms=1.0,
    )
    with AuditLog(path, key, "gw") as log:
        log.record(AuditEvent(request_id="direct", **common))  # type: ignore[arg-type]
        log.record(
            AuditEvent(
                request_id="relayed",
                origin_ae="CT_ROOM_1",
                origin_address="10.1.2.3",
                **common,  # type: ignore[arg-type]
            )
        )
    direct, relayed = (json.loads(line) for line in path.read_text().splitlines())
    assert (direct["origin_ae"], direct["origin_address"]) == ("", "")
    assert (relayed["origin_ae"], relayed["origin_address"]) == ("CT_ROOM_1", "10.1.2.3")
    assert relayed["client"] == "ingest"
    assert verify(path, key) == []
