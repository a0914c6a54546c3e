"""A tamper-evident audit trail: one HMAC-chained JSON line per gateway call.

Each record carries its writer's ``chain`` name, a per-chain ``seq`` (1, 2, 3, ...), the
``prev`` record's ``mac`` and its own ``mac`` over everything else, so without the key nobody
can edit, remove, reorder or insert a record unseen. Cutting records off the end leaves a
valid chain; only the writer's last sequence number (:data:`AUDIT_LAST_SEQUENCE`, scraped by
Prometheus) shows it, which is why :func:`verify` takes ``expected_last``.

No patient data is written: the StudyInstanceUID is replaced by a keyed pseudonym (equal
studies stay linkable for whoever holds the key) and findings are summaries, never pixels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

MIN_KEY_BYTES = 32

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

    __slots__ = ("_mac_key", "_pseudonym_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(
                f"audit key is {len(secret)} bytes; at least {MIN_KEY_BYTES} are needed"
            )
        # Separate keys so that no record MAC can ever equal some study's pseudonym.
        self._mac_key = hmac.digest(secret, b"audit-record", "sha256")
        self._pseudonym_key = hmac.digest(secret, b"study-uid", "sha256")

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

    def __repr__(self) -> str:
        return "AuditKey(<secret>)"


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
    }


class AuditLog:
    """Appends one chain's records to a JSON-lines file that other chains may share.

    A restarted writer continues its chain from the file (read once, here), so a pod restart
    is not mistaken for removed records.
    """

    def __init__(self, path: Path, key: AuditKey, chain: str, *, fsync: bool = True) -> None:
        if not _CHAIN_NAME.fullmatch(chain):
            raise ValueError("audit chain name must be 1-128 of A-Z a-z 0-9 . _ : @ -")
        self.path = path
        self._key = key
        self._lock = threading.Lock()
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
            return seq

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        """Release the file; further record() calls fail."""
        with self._lock:
            if self._fd >= 0:
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
    number: int, line: bytes, key: AuditKey, chains: dict[str, tuple[int, str, int]]
) -> list[str]:
    """Problems with one complete line; updates ``chains`` (chain -> seq, mac, line)."""
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
    return problems


def _scan(
    path: Path, key: AuditKey, expected_last: dict[str, int] | None
) -> tuple[list[str], dict[str, tuple[int, str, int]]]:
    problems: list[str] = []
    chains: dict[str, tuple[int, str, int]] = {}
    number = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                problems.append(f"line {number}: cut short (no end of line; a torn write?)")
                break
            problems.extend(_check_line(number, line[:-1], key, chains))
    for chain, expected in sorted((expected_last or {}).items()):
        last_seq, _, last_line = chains.get(chain, (0, "", 0))
        if last_seq < expected:
            at = f"line {last_line}" if last_line else "no record"
            problems.append(
                f"end of file (line {number}), chain {_chain_label(chain)}: last record is seq "
                f"{last_seq} ({at}) but the writer reported seq {expected} (records removed)"
            )
    return problems, chains


def verify(path: Path, key: AuditKey, expected_last: dict[str, int] | None = None) -> list[str]:
    """Every problem in the file, one line each; empty when intact.

    ``expected_last`` (chain -> last seq its writer reported) is the only way to see records
    cut off the end. Problems name line numbers, chains and seqs, never other field values.
    """
    return _scan(path, key, expected_last)[0]


def _parse_expected(items: list[str]) -> dict[str, int]:
    expected: dict[str, int] = {}
    for item in items:
        chain, sep, seq = item.rpartition("=")
        if not sep or not chain or not seq.isdigit():
            raise ValueError(f"expected last sequence {item!r} is not CHAIN=SEQ")
        expected[chain] = int(seq)
    return expected


def main_verify(path: str, key_file: str, expected: list[str]) -> int:
    """CLI body: 0 when intact, 1 with each problem printed, 2 when it cannot check at all."""
    try:
        key = AuditKey.from_file(key_file)
        problems, chains = _scan(Path(path), key, _parse_expected(expected))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    if problems:
        return 1
    records = sum(seq for seq, _, _ in chains.values())
    print(f"ok: {records} records in {len(chains)} chain(s)")
    return 0
