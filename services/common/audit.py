"""A tamper-evident audit trail: one HMAC-chained JSON line per gateway call.

Each record carries its writer's ``chain`` name, a per-chain ``seq`` (1, 2, 3, ...), the
``prev`` record's ``mac`` and its own ``mac`` over everything else, so without the key nobody
can edit, remove, reorder or insert a record unseen. Cutting records off the end, putting back
an earlier copy of the file, emptying it or deleting a chain still leaves valid chains, so the
file alone can never prove its own tail. Two anchors kept outside it can:

* the writer's last sequence number (:data:`AUDIT_LAST_SEQUENCE`, scraped by Prometheus),
  given to :func:`verify` as ``expected_last`` (``--expect CHAIN=SEQ``);
* checkpoints: the writer logs ``audit checkpoint chain=C seq=N mac=M cmac=X`` (logger
  ``imaging.audit``, INFO) at open, every ``checkpoint_records`` records or
  ``checkpoint_seconds`` seconds, and at close. ``mac`` is record N's MAC and ``cmac`` a keyed
  MAC over the line, so it cannot be forged without the key. The service log lives apart from
  the audit file; ``--checkpoints LOGFILE`` checks that record N is still there with that MAC,
  which also catches a cut-off tail rewritten by a restarted writer.

``audit verify`` exits :data:`EXIT_OK` only when every chain's tail is anchored and matches.

No patient data is written: the StudyInstanceUID is replaced by a keyed pseudonym (equal
studies stay linkable for whoever holds the key) and findings are summaries, never pixels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

MIN_KEY_BYTES = 32

# `audit verify` exit codes (main_verify): scripts tell "tampered" from "cannot tell".
EXIT_OK = 0  # every chain intact and its tail anchored by --expect or a checkpoint
EXIT_TAMPERED = 1  # a broken chain, or a chain short of / different from an anchor
EXIT_ERROR = 2  # could not check at all (key, file, arguments)
EXIT_TAIL_UNVERIFIED = 3  # chains intact, but some chain's end is anchored by nothing
EXIT_NO_RECORDS = 4  # no audit record at all: an emptied or replaced file looks like this

# Writer defaults: a checkpoint at least every 100 records or 300 s (checked when writing).
CHECKPOINT_RECORDS = 100
CHECKPOINT_SECONDS = 300.0

# Checkpoints go to the service log, never to the audit file they anchor.
_checkpoint_log = logging.getLogger("imaging.audit")
# Found anywhere in a line, so the log formatter's prefix does not matter.
_CHECKPOINT_LINE = re.compile(
    rb"audit checkpoint chain=([A-Za-z0-9._:@-]{1,128}) seq=([1-9][0-9]{0,17}) "
    rb"mac=([0-9a-f]{64}) cmac=([0-9a-f]{64})(?![0-9a-f])"
)

AUDIT_LAST_SEQUENCE = Gauge(
    "imaging_audit_last_sequence",
    "Sequence number of the last audit record each chain wrote (compare with the file).",
    ["chain"],
)

# Fields every record has besides the event's; verify() reads only these.
_CHAIN_FIELDS = ("chain", "seq", "prev", "mac")
# Chain names are printed by verify(); anything else in that field is shown as a placeholder
# so a forged line cannot put arbitrary text into the report.
_CHAIN_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


class AuditKey:
    """The audit secret; the two purposes (record MACs, study pseudonyms) use derived keys."""

    __slots__ = ("_checkpoint_key", "_mac_key", "_pseudonym_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(
                f"audit key is {len(secret)} bytes; at least {MIN_KEY_BYTES} are needed"
            )
        # Separate keys so that no record MAC can ever equal some study's pseudonym.
        self._mac_key = hmac.digest(secret, b"audit-record", "sha256")
        self._pseudonym_key = hmac.digest(secret, b"study-uid", "sha256")
        self._checkpoint_key = hmac.digest(secret, b"audit-checkpoint", "sha256")

    @classmethod
    def from_file(cls, path: Path | str) -> AuditKey:
        """The key in ``path`` (surrounding whitespace ignored, as editors add newlines)."""
        secret = Path(path).read_bytes().strip()
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(
                f"audit key file {path} holds {len(secret)} bytes after stripping whitespace; "
                f"at least {MIN_KEY_BYTES} are needed"
            )
        return cls(secret)

    def mac(self, data: bytes) -> str:
        """Hex HMAC-SHA256 of ``data``: the record MAC."""
        return hmac.new(self._mac_key, data, hashlib.sha256).hexdigest()

    def pseudonym(self, value: str) -> str:
        """Hex HMAC-SHA256 of ``value``: stable per key, so equal UIDs link without the UID."""
        return hmac.new(self._pseudonym_key, value.encode(), hashlib.sha256).hexdigest()

    def checkpoint_mac(self, chain: str, seq: int, mac: str) -> str:
        """Hex HMAC-SHA256 that makes a checkpoint log line unforgeable without the key."""
        data = f"checkpoint|{chain}|{seq}|{mac}".encode()
        return hmac.new(self._checkpoint_key, data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "AuditKey(<secret>)"


@dataclass(frozen=True)
class Checkpoint:
    """What a writer logged: its chain's record ``seq`` exists and has MAC ``mac``."""

    chain: str
    seq: int
    mac: str

    def line(self, key: AuditKey) -> str:
        """The log message: fixed and parseable, no patient data (names, numbers and MACs)."""
        cmac = key.checkpoint_mac(self.chain, self.seq, self.mac)
        return f"audit checkpoint chain={self.chain} seq={self.seq} mac={self.mac} cmac={cmac}"


def read_checkpoints(paths: Iterable[Path | str], key: AuditKey) -> tuple[list[Checkpoint], int]:
    """The checkpoints in log files whose cmac verifies, and how many lines failed to.

    Other lines are skipped unread, so a whole service log can be given as it is.
    """
    found: list[Checkpoint] = []
    ignored = 0
    for path in paths:
        with Path(path).open("rb") as f:
            for line in f:
                match = _CHECKPOINT_LINE.search(line)
                if match is None:
                    continue
                chain, seq, mac = match[1].decode(), int(match[2]), match[3].decode()
                if hmac.compare_digest(key.checkpoint_mac(chain, seq, mac), match[4].decode()):
                    found.append(Checkpoint(chain, seq, mac))
                else:
                    ignored += 1
    return found, ignored


@dataclass(frozen=True)
class AuditFinding:
    """A finding as audited: code and verdict, never the image it came from."""

    code: str
    probability: float
    status: str  # "positive", "negative", or why there is no verdict


@dataclass(frozen=True)
class AuditEvent:
    """What the gateway knows about one call."""

    request_id: str
    client: str  # key name, certificate CN or JWT subject; "" when anonymous
    peer: str  # e.g. "ipv4:127.0.0.1:5555"
    method: str  # "Analyze", "AnalyzeStream", ...
    pipeline: str
    model_name: str
    model_version: str  # the version Triton reported serving
    instance_sha256: tuple[str, ...]
    study_uid: str  # raw; only its pseudonym is written
    findings: tuple[AuditFinding, ...]
    status: str  # gRPC status code name, e.g. "OK"
    latency_ms: float
    # The caller named the pipeline, and the keywords (never values) of the routing tags
    # (BodyPartExamined, ViewPosition) that naming it overrode: services/common/pipelines.py.
    pipeline_named: bool = False
    routing_overridden: tuple[str, ...] = ()


def _canonical(record: dict[str, Any]) -> bytes:
    """The one serialisation that is MAC'd and written: verify() rebuilds it byte for byte."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _finite(value: float, digits: int) -> float:
    # JSON has no NaN; an audit line must never fail to be written over a bad float.
    return round(value, digits) if math.isfinite(value) else -1.0


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event_fields(event: AuditEvent, key: AuditKey) -> dict[str, Any]:
    return {
        "request_id": event.request_id,
        "client": event.client,
        "peer": event.peer,
        "method": event.method,
        "pipeline": event.pipeline,
        "model_name": event.model_name,
        "model_version": event.model_version,
        "instance_sha256": list(event.instance_sha256),
        "study_uid_hmac": key.pseudonym(event.study_uid) if event.study_uid else "",
        "findings": [
            {"code": f.code, "probability": _finite(f.probability, 4), "status": f.status}
            for f in event.findings
        ],
        "status": event.status,
        "latency_ms": _finite(event.latency_ms, 3),
        "pipeline_named": event.pipeline_named,
        "routing_overridden": list(event.routing_overridden),
    }


class AuditLog:
    """Appends one chain's records to a JSON-lines file that other chains may share.

    A restarted writer continues its chain from the file (read once, here), so a pod restart
    is not mistaken for removed records. That file may have been cut short meanwhile, which is
    why the writer also logs a :class:`Checkpoint` outside it: at open, after every
    ``checkpoint_records`` records, on the first record ``checkpoint_seconds`` after the last
    checkpoint (``clock`` is read when writing, so no thread is needed) and at close.
    """

    def __init__(
        self,
        path: Path,
        key: AuditKey,
        chain: str,
        *,
        fsync: bool = True,
        checkpoint_records: int = CHECKPOINT_RECORDS,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _CHAIN_NAME.fullmatch(chain):
            raise ValueError("audit chain name must be 1-128 of A-Z a-z 0-9 . _ : @ -")
        if checkpoint_records < 1 or not checkpoint_seconds > 0:
            raise ValueError("audit checkpoints need a positive record count and interval")
        self.path = path
        self._key = key
        self._lock = threading.Lock()
        self._checkpoint_records = checkpoint_records
        self._checkpoint_seconds = checkpoint_seconds
        self._clock = clock
        self._checkpointed = 0  # seq of the last checkpoint logged
        self._checkpoint_time = clock()
        stream = path.exists() and not path.is_file()  # /dev/stdout, a pipe: nothing to resume
        # A stream cannot be read back, so each process starts its own chain on it, named by
        # its start time: a restarted container never repeats the sequence of its last run.
        self.chain = f"{chain}@{int(time.time())}" if stream else chain
        if not _CHAIN_NAME.fullmatch(self.chain):
            raise ValueError("audit chain name must be 1-128 of A-Z a-z 0-9 . _ : @ -")
        self._fsync = fsync and not stream
        self._seq, self._prev = (0, "") if stream else self._resume()
        if stream:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        else:
            # O_APPEND: each record is one write() at the end, even with other writers on the
            # file (a local file system; NFS does not keep appends atomic).
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        size = 0 if stream else os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            # A crash cut the last line short: end it, so it stays visible to verify() as one
            # bad line instead of corrupting our next record. The file is never rewritten.
            self._write(b"\n")
        AUDIT_LAST_SEQUENCE.labels(self.chain).set(self._seq)
        self._checkpoint()  # anchors what was resumed, before anything is appended

    def _resume(self) -> tuple[int, str]:
        """(last seq, its mac) of this chain in the file; (0, "") for a new chain."""
        seq, prev = 0, ""
        if not self.path.exists():
            return seq, prev
        # Canonical records start with the chain field (sorted keys): skip others unparsed.
        prefix = b'{"chain":' + json.dumps(self.chain).encode() + b","
        with self.path.open("rb") as f:
            for line in f:
                if not line.startswith(prefix) or not line.endswith(b"\n"):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record.get("seq"), int) and isinstance(record.get("mac"), str):
                    seq, prev = record["seq"], record["mac"]
        return seq, prev

    @property
    def last_sequence(self) -> int:
        """Seq of the last record this chain holds (0 before the first)."""
        return self._seq

    def record(self, event: AuditEvent) -> int:
        """Append ``event`` as the chain's next record; returns its seq."""
        with self._lock:
            seq = self._seq + 1
            record = {
                "chain": self.chain,
                "seq": seq,
                "time": _utc_now(),
                **_event_fields(event, self._key),
                "prev": self._prev,
            }
            record["mac"] = self._key.mac(_canonical(record))
            self._write(_canonical(record) + b"\n")
            # Advance only once written: a failed write must not leave a gap in the chain.
            self._seq, self._prev = seq, record["mac"]
            AUDIT_LAST_SEQUENCE.labels(self.chain).set(seq)
            if (
                seq - self._checkpointed >= self._checkpoint_records
                or self._clock() - self._checkpoint_time >= self._checkpoint_seconds
            ):
                self._checkpoint()
            return seq

    def _checkpoint(self) -> None:
        """Log the chain's last record (nothing before the first: there is nothing to anchor)."""
        self._checkpoint_time = self._clock()
        if self._seq == 0:
            return
        _checkpoint_log.info(Checkpoint(self.chain, self._seq, self._prev).line(self._key))
        self._checkpointed = self._seq

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        """Release the file after a last checkpoint; further record() calls fail."""
        with self._lock:
            if self._fd >= 0:
                if self._seq > self._checkpointed:
                    self._checkpoint()
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _chain_label(value: object) -> str:
    if isinstance(value, str) and _CHAIN_NAME.fullmatch(value):
        return value
    return "<invalid chain name>"


def _check_line(
    number: int,
    line: bytes,
    key: AuditKey,
    chains: dict[str, tuple[int, str, int]],
    marked: dict[tuple[str, int], tuple[str, int] | None] | None = None,
) -> list[str]:
    """Problems with one complete line; updates ``chains`` (chain -> seq, mac, line).

    For (chain, seq) keys of ``marked`` (checkpointed records) it also notes (mac, line) of the
    record the chain took at that seq, so only those records are remembered, not the file.
    """
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return [f"line {number}: not a JSON record"]
    if not isinstance(record, dict) or not all(
        isinstance(record.get(f), str) for f in ("chain", "prev", "mac")
    ):
        return [f"line {number}: not an audit record (chain, prev or mac missing)"]
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return [f"line {number}, chain {_chain_label(record['chain'])}: seq missing"]
    where = f"line {number}, chain {_chain_label(record['chain'])}, seq {seq}"
    body = {k: v for k, v in record.items() if k != "mac"}
    try:
        canonical, signed = _canonical(record), _canonical(body)
    except ValueError:
        return [f"{where}: holds a number JSON cannot represent (line edited)"]
    problems = []
    if canonical != line:
        problems.append(f"{where}: not in the form the writer writes (line edited)")
    if not hmac.compare_digest(key.mac(signed), record["mac"]):
        problems.append(f"{where}: mac mismatch (record edited or not written with this key)")
    last_seq, last_mac, last_line = chains.get(record["chain"], (0, "", 0))
    if seq <= last_seq:
        problems.append(
            f"{where}: seq goes backwards or repeats after seq {last_seq} (line {last_line})"
        )
    elif seq != last_seq + 1:
        missing = f"{last_seq + 1}" if seq == last_seq + 2 else f"{last_seq + 1}-{seq - 1}"
        problems.append(f"{where}: seq {missing} missing (records removed)")
    elif record["prev"] != last_mac:
        after = f"the mac of seq {last_seq}" if last_seq else "empty for the first record"
        problems.append(f"{where}: prev is not {after}")
    # Resynchronise forwards only: a removal or a swap is reported once, not on every later line.
    if seq > last_seq:
        chains[record["chain"]] = (seq, record["mac"], number)
        if marked is not None and (record["chain"], seq) in marked:
            marked[record["chain"], seq] = (record["mac"], number)
    return problems


def _scan(
    path: Path,
    key: AuditKey,
    expected_last: dict[str, int] | None,
    marked: dict[tuple[str, int], tuple[str, int] | None] | None = None,
) -> tuple[list[str], dict[str, tuple[int, str, int]]]:
    problems: list[str] = []
    chains: dict[str, tuple[int, str, int]] = {}
    number = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                problems.append(f"line {number}: cut short (no end of line; a torn write?)")
                break
            problems.extend(_check_line(number, line[:-1], key, chains, marked))
    for chain, expected in sorted((expected_last or {}).items()):
        last_seq, _, last_line = chains.get(chain, (0, "", 0))
        if last_seq < expected:
            at = f"line {last_line}" if last_line else "no record"
            problems.append(
                f"end of file (line {number}), chain {_chain_label(chain)}: last record is seq "
                f"{last_seq} ({at}) but the writer reported seq {expected} (records removed)"
            )
    return problems, chains


def _check_checkpoints(
    checkpoints: Iterable[Checkpoint],
    chains: dict[str, tuple[int, str, int]],
    marked: dict[tuple[str, int], tuple[str, int] | None],
) -> list[str]:
    """Problems where the file disagrees with a checkpoint; every checkpoint is checked, as a
    restarted writer's genuine later checkpoints do not vouch for what it rewrote."""
    problems: list[str] = []
    by_chain: dict[str, list[Checkpoint]] = {}
    for mark in set(checkpoints):
        by_chain.setdefault(mark.chain, []).append(mark)
    for chain, marks in sorted(by_chain.items()):
        marks.sort(key=lambda m: (m.seq, m.mac))
        top = marks[-1]
        if chain not in chains:
            problems.append(
                f"chain {chain}: checkpoint at seq {top.seq} but the file holds no record of "
                "this chain (chain deleted or file replaced)"
            )
            continue
        last_seq, _, last_line = chains[chain]
        if last_seq < top.seq:
            problems.append(
                f"chain {chain}: checkpoint at seq {top.seq} but the chain ends at seq "
                f"{last_seq} (line {last_line}) (records cut off or the file rolled back)"
            )
        differ = []
        for mark in marks:
            if mark.seq > last_seq:
                continue  # reported above, once
            found = marked.get((chain, mark.seq))
            if found is None:
                differ.append(f"chain {chain}, seq {mark.seq}: checkpointed but not in the file")
            elif not hmac.compare_digest(found[0], mark.mac):
                differ.append(
                    f"line {found[1]}, chain {chain}, seq {mark.seq}: not the record the "
                    "checkpoint logged (records replaced, e.g. cut off and rewritten by a "
                    "restarted writer)"
                )
        if differ:
            more = len(differ) - 1
            problems.append(differ[0] + (f"; {more} more checkpoint(s) differ" if more else ""))
    return problems


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`check` found: problems, and how far each chain's tail is anchored."""

    problems: list[str]
    last: dict[str, int]  # chain -> seq of its last record in the file
    # chain -> (seq, "--expect" or "checkpoint"): the file must reach that seq, so records
    # up to it cannot have been cut off; chains missing here have an unanchored tail.
    anchors: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(self.last.values())

    @property
    def unanchored(self) -> list[str]:
        return sorted(chain for chain in self.last if chain not in self.anchors)


def check(
    path: Path,
    key: AuditKey,
    expected_last: dict[str, int] | None = None,
    checkpoints: Iterable[Checkpoint] = (),
) -> VerifyResult:
    """Verify the file against its chains and the anchors kept outside it.

    ``expected_last`` (chain -> last seq its writer reported) and ``checkpoints`` (from
    :func:`read_checkpoints`) are what reveal records cut off the end, a rolled-back or
    emptied file and a deleted chain; checkpoints also reveal a cut-off tail rewritten by a
    restarted writer, as the rewritten records have other MACs.
    """
    checkpoints = list(checkpoints)
    marked: dict[tuple[str, int], tuple[str, int] | None] = {
        (m.chain, m.seq): None for m in checkpoints
    }
    problems, chains = _scan(path, key, expected_last, marked)
    problems.extend(_check_checkpoints(checkpoints, chains, marked))
    anchors: dict[str, tuple[int, str]] = {}
    for mark in checkpoints:
        if mark.seq > anchors.get(mark.chain, (0, ""))[0]:
            anchors[mark.chain] = (mark.seq, "checkpoint")
    for chain, seq in (expected_last or {}).items():
        if seq > anchors.get(chain, (0, ""))[0]:
            anchors[chain] = (seq, "--expect")
    last = {chain: seq for chain, (seq, _, _) in chains.items()}
    return VerifyResult(problems, last, {c: a for c, a in anchors.items() if c in last})


def verify(
    path: Path,
    key: AuditKey,
    expected_last: dict[str, int] | None = None,
    checkpoints: Iterable[Checkpoint] = (),
) -> list[str]:
    """Every problem in the file, one line each; empty when no problem is found.

    Empty is not proof of an intact tail: without ``expected_last`` or ``checkpoints`` (see
    :func:`check`, which also says which chains are anchored) a file cut short, rolled back or
    emptied looks clean. Problems name line numbers, chains and seqs, never other field values.
    """
    return check(path, key, expected_last, checkpoints).problems


def _parse_expected(items: list[str]) -> dict[str, int]:
    expected: dict[str, int] = {}
    for item in items:
        chain, sep, seq = item.rpartition("=")
        if not sep or not chain or not seq.isdigit():
            raise ValueError(f"expected last sequence {item!r} is not CHAIN=SEQ")
        expected[chain] = int(seq)
    return expected


def _seqs(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


def main_verify(
    path: str, key_file: str, expected: list[str], checkpoints: Sequence[str] = ()
) -> int:
    """CLI body (``audit verify``); the last line printed is the verdict.

    Exit codes: :data:`EXIT_OK` (0) every chain intact and its tail anchored by ``--expect`` or
    a checkpoint; :data:`EXIT_TAMPERED` (1) problems, each printed; :data:`EXIT_ERROR` (2)
    could not check at all; :data:`EXIT_TAIL_UNVERIFIED` (3) chains intact but some chain's
    end anchored by nothing; :data:`EXIT_NO_RECORDS` (4) no record at all.
    """
    try:
        key = AuditKey.from_file(key_file)
        expected_last = _parse_expected(expected)
        marks, ignored = read_checkpoints(checkpoints, key)
        result = check(Path(path), key, expected_last, marks)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    if checkpoints:
        print(
            f"checkpoints: {len(marks)} read from {len(checkpoints)} file(s)"
            + (
                f", {ignored} ignored (cmac wrong for this key: forged or another key's)"
                if ignored
                else ""
            )
        )
    for problem in result.problems:
        print(problem)
    if result.problems:
        return EXIT_TAMPERED
    if not result.last:
        print(
            "not ok: the file holds no audit record, so nothing is verified; an emptied or "
            "replaced file looks like this"
        )
        return EXIT_NO_RECORDS
    for chain, last in sorted(result.last.items()):
        line = f"chain {_chain_label(chain)}: {_seqs(1, last)} intact, "
        if chain not in result.anchors:
            print(line + "tail NOT anchored (no --expect or checkpoint for this chain)")
            continue
        seq, how = result.anchors[chain]
        after = f"; {_seqs(seq + 1, last)} after it not anchored yet" if last > seq else ""
        print(f"{line}tail anchored at seq {seq} ({how}){after}")
    summary = f"{result.records} records in {len(result.last)} chain(s)"
    if result.unanchored:
        print(
            f"tail not verified: {summary} intact up to their last seq, but "
            f"{len(result.unanchored)} chain(s) have an end anchored by nothing: records cut "
            "off the end, an earlier copy of the file or a deleted chain would look the same "
            "(give --checkpoints LOG or --expect CHAIN=SEQ)"
        )
        return EXIT_TAIL_UNVERIFIED
    print(f"ok: {summary}, every chain's tail anchored")
    return EXIT_OK
