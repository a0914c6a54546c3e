"""The audit trail: records chain, restarts continue, and every kind of tampering is caught."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.common.audit import (
    AuditEvent,
    AuditFinding,
    AuditKey,
    AuditLog,
    main_verify,
    verify,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SECRET = b"k" * 40


def event(n: int = 0, study_uid: str = STUDY_UID) -> AuditEvent:
    return AuditEvent(
        request_id=f"req-{n}",
        client="radiology-pacs",
        peer="ipv4:127.0.0.1:5555",
        method="Analyze",
        pipeline="cxr_pneumonia",
        model_name="cxr_densenet",
        model_version="3",
        instance_sha256=("ab" * 32,),
        study_uid=study_uid,
        findings=(AuditFinding("233604007", 0.123456789, "positive"),),
        status="OK",
        latency_ms=12.34567,
    )


@pytest.fixture
def key() -> AuditKey:
    return AuditKey(SECRET)


def write(path: Path, key: AuditKey, chain: str, count: int) -> None:
    with AuditLog(path, key, chain) as log:
        for n in range(count):
            log.record(event(n))


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_verify_clean_and_have_the_documented_form(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, key, "gw-0") as log:
        assert log.last_sequence == 0
        assert [log.record(event(n)) for n in range(3)] == [1, 2, 3]
        assert log.last_sequence == 3
    assert verify(path, key) == []
    raw = lines(path)
    assert len(raw) == 3 and all(line.endswith(b"\n") for line in raw)
    records = [json.loads(line) for line in raw]
    for line, record in zip(raw, records, strict=True):
        assert line == json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert [r["prev"] for r in records] == ["", records[0]["mac"], records[1]["mac"]]
    assert records[0]["findings"] == [
        {"code": "233604007", "probability": 0.1235, "status": "positive"}
    ]
    assert records[0]["instance_sha256"] == ["ab" * 32]
    assert "study_uid" not in records[0] and len(records[0]["study_uid_hmac"]) == 64


def test_a_restart_continues_the_chain(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-restart", 2)
    with AuditLog(path, key, "gw-restart") as log:
        assert log.last_sequence == 2
        assert log.record(event(9)) == 3
    records = [json.loads(line) for line in lines(path)]
    assert records[2]["seq"] == 3 and records[2]["prev"] == records[1]["mac"]
    assert verify(path, key, {"gw-restart": 3}) == []


def test_two_chains_in_one_file_verify_independently(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, key, "gw-a") as a, AuditLog(path, key, "gw-b") as b:
        for n in range(3):
            a.record(event(n))
            b.record(event(n))
    assert verify(path, key, {"gw-a": 3, "gw-b": 3}) == []
    # Remove one of b's records: only chain b is reported.
    raw = lines(path)
    del raw[3]
    path.write_bytes(b"".join(raw))
    problems = verify(path, key)
    assert problems and all("chain gw-b" in p for p in problems)


def test_an_edited_field_is_caught_without_echoing_it(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 3)
    path.write_bytes(path.read_bytes().replace(b'"req-1"', b'"SMITH^JOHN"'))
    problems = verify(path, key)
    assert len(problems) == 1 and "line 2" in problems[0] and "mac mismatch" in problems[0]
    assert "chain gw-0" in problems[0] and "SMITH" not in problems[0]


def test_a_record_written_with_another_key_is_caught(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 2)
    assert any("mac mismatch" in p for p in verify(path, AuditKey(b"o" * 40)))


def test_a_removed_middle_line_is_caught(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 4)
    raw = lines(path)
    del raw[1]
    path.write_bytes(b"".join(raw))
    assert verify(path, key) == ["line 2, chain gw-0, seq 3: seq 2 missing (records removed)"]


def test_a_removed_first_line_is_caught(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 3)
    path.write_bytes(b"".join(lines(path)[1:]))
    assert verify(path, key) == ["line 1, chain gw-0, seq 2: seq 1 missing (records removed)"]


def test_two_swapped_lines_are_caught(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 4)
    raw = lines(path)
    raw[1], raw[2] = raw[2], raw[1]
    path.write_bytes(b"".join(raw))
    assert verify(path, key) == [
        "line 2, chain gw-0, seq 3: seq 2 missing (records removed)",
        "line 3, chain gw-0, seq 2: seq goes backwards or repeats after seq 3 (line 2)",
    ]


def test_a_duplicated_line_is_caught(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 3)
    raw = lines(path)
    path.write_bytes(b"".join([*raw[:2], raw[1], raw[2]]))
    assert verify(path, key) == [
        "line 3, chain gw-0, seq 2: seq goes backwards or repeats after seq 2 (line 2)"
    ]


def test_a_last_line_cut_in_half_is_caught(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 3)
    data = path.read_bytes()
    last = lines(path)[-1]
    path.write_bytes(data[: len(data) - len(last) // 2])
    assert verify(path, key) == ["line 3: cut short (no end of line; a torn write?)"]


def test_a_restart_after_a_torn_write_keeps_the_torn_line_visible(
    tmp_path: Path, key: AuditKey
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-torn", 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with AuditLog(path, key, "gw-torn") as log:
        assert log.record(event()) == 3  # seq 3 never completed: it is written again
    assert verify(path, key, {"gw-torn": 3}) == ["line 3: not a JSON record"]


def test_the_last_two_lines_removed_are_caught_only_against_expected_last(
    tmp_path: Path, key: AuditKey
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 5)
    path.write_bytes(b"".join(lines(path)[:-2]))
    assert verify(path, key) == []  # a shorter chain is still a valid chain
    problems = verify(path, key, {"gw-0": 5})
    assert len(problems) == 1
    assert "chain gw-0" in problems[0] and "seq 3" in problems[0] and "seq 5" in problems[0]
    assert verify(path, key, {"gw-0": 3}) == []
    assert "no record" in verify(path, key, {"gw-other": 1})[0]


def test_a_line_that_is_not_json_is_caught(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 2)
    path.write_bytes(path.read_bytes() + b"garbage\n[1]\n")
    assert verify(path, key) == [
        "line 3: not a JSON record",
        "line 4: not an audit record (chain, prev or mac missing)",
    ]


def test_the_study_uid_and_patient_like_strings_never_reach_the_file(
    tmp_path: Path, key: AuditKey
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, key, "gw-0") as log:
        log.record(event(study_uid=STUDY_UID))
        log.record(event(study_uid="DOE^JANE 19700101"))
        log.record(event(study_uid=""))
    data = path.read_bytes()
    for secret in (STUDY_UID.encode(), b"3680043", b"DOE", b"JANE", b"19700101"):
        assert secret not in data
    records = [json.loads(line) for line in lines(path)]
    assert records[0]["study_uid_hmac"] == key.pseudonym(STUDY_UID)
    assert records[2]["study_uid_hmac"] == ""


def test_pseudonyms_are_stable_per_key_and_differ_across_keys(key: AuditKey) -> None:
    assert key.pseudonym(STUDY_UID) == AuditKey(SECRET).pseudonym(STUDY_UID)
    assert key.pseudonym(STUDY_UID) != key.pseudonym(STUDY_UID + "0")
    assert key.pseudonym(STUDY_UID) != AuditKey(b"o" * 40).pseudonym(STUDY_UID)
    assert key.pseudonym(STUDY_UID) != key.mac(STUDY_UID.encode())  # separate purposes


def test_a_key_file_is_stripped_and_a_short_one_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.key"
    good.write_bytes(b"  " + SECRET + b"\n")
    assert AuditKey.from_file(good).mac(b"x") == AuditKey(SECRET).mac(b"x")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31 + b"\n" + b" " * 10)
    with pytest.raises(ValueError, match=r"31 bytes.*at least 32"):
        AuditKey.from_file(short)
    assert "kkkk" not in repr(AuditKey(SECRET))


def test_the_gauge_reports_the_last_sequence(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-gauge", 2)
    with AuditLog(path, key, "gw-gauge") as log:
        labels = {"chain": "gw-gauge"}
        assert REGISTRY.get_sample_value("imaging_audit_last_sequence", labels) == 2
        log.record(event())
        assert REGISTRY.get_sample_value("imaging_audit_last_sequence", labels) == 3


def test_records_from_many_threads_form_one_chain(tmp_path: Path, key: AuditKey) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, key, "gw-threads", fsync=False) as log:
        threads = [
            threading.Thread(target=lambda: [log.record(event(n)) for n in range(50)])
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert verify(path, key, {"gw-threads": 400}) == []
    assert len(lines(path)) == 400


def test_main_verify_prints_and_returns(
    tmp_path: Path, key: AuditKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path, key_file = tmp_path / "audit.jsonl", tmp_path / "audit.key"
    key_file.write_bytes(SECRET)
    write(path, key, "gw-a", 2)
    write(path, key, "gw-b", 1)
    assert main_verify(str(path), str(key_file), ["gw-a=2"]) == 0
    assert capsys.readouterr().out == "ok: 3 records in 2 chain(s)\n"
    assert main_verify(str(path), str(key_file), ["gw-a=4"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "chain gw-a" in out[0] and "seq 4" in out[0]
    assert main_verify(str(path), str(key_file), ["gw-a"]) == 2
    assert "CHAIN=SEQ" in capsys.readouterr().err


def test_a_stream_such_as_stdout_is_written_without_reading_it_back(
    tmp_path: Path, key: AuditKey
) -> None:
    import os

    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    log = AuditLog(fifo, key, "gateway-0")  # reading a pipe back would block forever
    assert re.fullmatch(r"gateway-0@\d+", log.chain)  # each process: a chain of its own
    log.record(event(1))
    log.record(event(2))
    log.close()
    reader.join(10)
    assert not reader.is_alive()
    copy = tmp_path / "captured.jsonl"
    copy.write_bytes(received[0])
    assert len(lines(copy)) == 2
    assert verify(copy, key) == []
