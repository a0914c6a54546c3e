"""The audit trail: records chain, restarts continue, and every kind of tampering is caught."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.cli.audit_verify import (
    EXIT_ERROR,
    EXIT_NO_RECORDS,
    EXIT_OK,
    EXIT_TAIL_UNVERIFIED,
    EXIT_TAMPERED,
    check,
    main_verify,
    read_checkpoints,
    verify,
)
from services.common.audit import AuditEvent, AuditFinding, AuditKey, AuditLog, Checkpoint

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
    assert main_verify(str(path), str(key_file), ["gw-a=2", "gw-b=1"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "chain gw-a: seq 1-2 intact, tail anchored at seq 2 (--expect)",
        "chain gw-b: seq 1 intact, tail anchored at seq 1 (--expect)",
        "ok: 3 records in 2 chain(s), every chain's tail anchored",
    ]
    # gw-b's end is pinned by nothing: its chain is intact, its tail unverified.
    assert main_verify(str(path), str(key_file), ["gw-a=2"]) == EXIT_TAIL_UNVERIFIED
    out = capsys.readouterr().out.splitlines()
    assert "chain gw-b: seq 1 intact, tail NOT anchored" in out[1]
    assert out[-1].startswith("tail not verified: 3 records in 2 chain(s)")
    assert main_verify(str(path), str(key_file), ["gw-a=4"]) == EXIT_TAMPERED
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "chain gw-a" in out[0] and "seq 4" in out[0]
    assert main_verify(str(path), str(key_file), ["gw-a"]) == EXIT_ERROR
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


# --- The tail: anchored outside the file by --expect or by checkpoints in the service log ---


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "audit.key"
    path.write_bytes(SECRET)
    return str(path)


@pytest.fixture
def service_log(tmp_path: Path) -> Iterator[Path]:
    """The gateway's log file, kept apart from the audit file, as services.common.logs
    formats it: checkpoint lines are found behind any prefix."""
    path = tmp_path / "gateway.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [-] %(message)s"))
    logger = logging.getLogger("imaging.audit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def checkpoints_in(log: Path) -> list[tuple[str, int]]:
    return [(c.chain, c.seq) for c in read_checkpoints([log], AuditKey(SECRET))[0]]


def test_without_an_anchor_a_removed_last_record_is_not_ok(
    tmp_path: Path, key: AuditKey, key_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 3)
    path.write_bytes(b"".join(lines(path)[:-1]))
    assert main_verify(str(path), key_file, []) == EXIT_TAIL_UNVERIFIED
    out = capsys.readouterr().out
    assert "chain gw-0: seq 1-2 intact, tail NOT anchored" in out
    assert "tail not verified" in out and "ok" not in out.split()


def test_without_an_anchor_a_rolled_back_file_is_not_ok(
    tmp_path: Path, key: AuditKey, key_file: str, service_log: Path
) -> None:
    path, backup = tmp_path / "audit.jsonl", tmp_path / "earlier.jsonl"
    write(path, key, "gw-0", 2)
    shutil.copy(path, backup)
    write(path, key, "gw-0", 3)
    shutil.copy(backup, path)  # the earlier copy put back: a valid, shorter chain
    assert verify(path, key) == []
    assert main_verify(str(path), key_file, []) == EXIT_TAIL_UNVERIFIED
    assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_TAMPERED


def test_an_emptied_file_is_not_ok(
    tmp_path: Path, key: AuditKey, key_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 3)
    path.write_bytes(b"")
    assert main_verify(str(path), key_file, []) == EXIT_NO_RECORDS
    assert "holds no audit record" in capsys.readouterr().out


def test_the_writer_logs_unforgeable_checkpoints_at_open_every_n_records_and_at_close(
    tmp_path: Path, key: AuditKey, service_log: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, key, "gw-0", checkpoint_records=2) as log:
        for n in range(5):
            log.record(event(n))
    assert checkpoints_in(service_log) == [("gw-0", 2), ("gw-0", 4), ("gw-0", 5)]
    with AuditLog(path, key, "gw-0"):
        pass  # a resumed chain is anchored at open; nothing new to log at close
    assert checkpoints_in(service_log)[3:] == [("gw-0", 5)]
    records = [json.loads(line) for line in lines(path)]
    text = service_log.read_text()
    line = text.splitlines()[-1]
    match = re.search(
        r"audit checkpoint chain=gw-0 seq=5 mac=([0-9a-f]{64}) cmac=([0-9a-f]{64})$", line
    )
    assert match and match[1] == records[4]["mac"]
    assert match[2] == key.checkpoint_mac("gw-0", 5, records[4]["mac"])
    assert match[2] != AuditKey(b"o" * 40).checkpoint_mac("gw-0", 5, records[4]["mac"])
    assert STUDY_UID not in text and "3680043" not in text


def test_a_checkpoint_is_logged_after_the_interval_by_the_injected_clock(
    tmp_path: Path, key: AuditKey, service_log: Path
) -> None:
    now = [1000.0]
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key, "gw-0", checkpoint_seconds=300, clock=lambda: now[0])
    log.record(event(1))
    now[0] += 299
    log.record(event(2))
    assert checkpoints_in(service_log) == []
    now[0] += 1
    log.record(event(3))
    assert checkpoints_in(service_log) == [("gw-0", 3)]
    now[0] += 299
    log.record(event(4))
    assert checkpoints_in(service_log) == [("gw-0", 3)]  # the interval restarts
    log.close()
    assert checkpoints_in(service_log) == [("gw-0", 3), ("gw-0", 4)]


def test_a_clean_file_and_its_checkpoints_verify_ok(
    tmp_path: Path,
    key: AuditKey,
    key_file: str,
    service_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-a", 3)
    write(path, key, "gw-b", 2)
    assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "checkpoints: 2 read from 1 file(s)",
        "chain gw-a: seq 1-3 intact, tail anchored at seq 3 (checkpoint)",
        "chain gw-b: seq 1-2 intact, tail anchored at seq 2 (checkpoint)",
        "ok: 5 records in 2 chain(s), every chain's tail anchored",
    ]
    # A writer still running: records after its last checkpoint are said to be unanchored.
    with AuditLog(path, key, "gw-a") as log:
        log.record(event(7))
        assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_OK
    assert "seq 4 after it not anchored yet" in capsys.readouterr().out


def test_checkpoints_catch_a_cut_off_tail(
    tmp_path: Path,
    key: AuditKey,
    key_file: str,
    service_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 5)
    path.write_bytes(b"".join(lines(path)[:-1]))
    assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_TAMPERED
    out = capsys.readouterr().out
    assert "checkpoint at seq 5 but the chain ends at seq 4 (line 4)" in out


def test_checkpoints_catch_a_cut_off_tail_rewritten_by_a_restarted_writer(
    tmp_path: Path,
    key: AuditKey,
    key_file: str,
    service_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, key, "gw-0", checkpoint_records=2) as log:
        for n in range(5):
            log.record(event(n))
    path.write_bytes(b"".join(lines(path)[:3]))  # seq 4 and 5 cut off...
    with AuditLog(path, key, "gw-0", checkpoint_records=2) as log:
        assert log.last_sequence == 3  # ...the restarted writer resumes from seq 3...
        for n in range(3):
            log.record(event(100 + n))  # ...and writes other records as seq 4, 5, 6
    # A valid chain that reaches past every checkpoint and the writer's gauge.
    assert verify(path, key, {"gw-0": 6}) == []
    assert max(seq for _, seq in checkpoints_in(service_log)) == 6
    assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_TAMPERED
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "line 4, chain gw-0, seq 4: not the record the checkpoint logged (records replaced, "
        "e.g. cut off and rewritten by a restarted writer); 1 more checkpoint(s) differ"
    ]


def test_a_checkpointed_chain_missing_from_the_file_is_tampering(
    tmp_path: Path,
    key: AuditKey,
    key_file: str,
    service_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-a", 2)
    write(path, key, "gw-b", 2)
    path.write_bytes(b"".join(line for line in lines(path) if b'"chain":"gw-b"' not in line))
    assert main_verify(str(path), key_file, []) == EXIT_TAIL_UNVERIFIED
    assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_TAMPERED
    assert "chain gw-b: checkpoint at seq 2 but the file holds no record" in (
        capsys.readouterr().out
    )
    path.write_bytes(b"")
    assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_TAMPERED


def test_a_forged_checkpoint_line_is_ignored_and_counted(
    tmp_path: Path,
    key: AuditKey,
    key_file: str,
    service_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 2)
    genuine = service_log.read_text()
    mac = json.loads(lines(path)[-1])["mac"]
    forged = Checkpoint("gw-0", 9, mac).line(AuditKey(b"o" * 40))  # the wrong key
    retargeted = Checkpoint("gw-0", 2, mac).line(key).replace("seq=2", "seq=9")
    service_log.write_text(f"{genuine}x INFO imaging.audit [-] {forged}\nnoise\n{retargeted}\n")
    assert main_verify(str(path), key_file, [], [str(service_log)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("checkpoints: 1 read from 1 file(s), 2 ignored (cmac wrong")
    assert read_checkpoints([service_log], key) == ([Checkpoint("gw-0", 2, mac)], 2)
    # Forged lines alone anchor nothing.
    only_forged = tmp_path / "forged.log"
    only_forged.write_text(f"{forged}\n")
    assert main_verify(str(path), key_file, [], [str(only_forged)]) == EXIT_TAIL_UNVERIFIED


def test_checkpoints_and_expect_anchor_chains_together(
    tmp_path: Path, key: AuditKey, service_log: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-a", 2)
    marks, _ = read_checkpoints([service_log], key)
    write(path, key, "gw-b", 3)
    result = check(path, key, {"gw-b": 3}, marks)
    assert result.problems == [] and result.unanchored == []
    assert result.anchors == {"gw-a": (2, "checkpoint"), "gw-b": (3, "--expect")}


def test_the_cli_passes_checkpoint_files(
    tmp_path: Path, key: AuditKey, key_file: str, service_log: Path
) -> None:
    from services.cli.main import main

    path = tmp_path / "audit.jsonl"
    write(path, key, "gw-0", 2)
    args = ["audit", "verify", str(path), "--key-file", key_file]
    assert main(args) == EXIT_TAIL_UNVERIFIED
    assert main([*args, "--checkpoints", str(service_log)]) == EXIT_OK
    other = tmp_path / "other.log"
    other.write_text("")
    assert main([*args, "--checkpoints", str(other), "--checkpoints", str(service_log)]) == 0
