"""A tamper-evident audit trail, the writer: one HMAC-chained JSON line per audited call.

Each record carries its writer's ``chain`` name, a per-chain ``seq`` (1, 2, 3, ...), the
``prev`` record's ``mac`` and its own ``mac`` over everything else, so without the key nobody
can edit, remove, reorder or insert a record unseen. Cutting records off the end, putting back
an earlier copy of the file, emptying it or deleting a chain still leaves valid chains, so the
file alone can never prove its own tail. Two anchors kept outside it can:

* the writer's last sequence number (:data:`AUDIT_LAST_SEQUENCE`, scraped by Prometheus),
  given to the verifier as ``expected_last`` (``--expect CHAIN=SEQ``);
* checkpoints: the writer logs ``audit checkpoint chain=C seq=N mac=M cmac=X`` (logger
  ``imaging.audit``, INFO) at open, every ``checkpoint_records`` records or
  ``checkpoint_seconds`` seconds, and at close. ``mac`` is record N's MAC and ``cmac`` a keyed
  MAC over the line, so it cannot be forged without the key. The service log lives apart from
  the audit file; ``--checkpoints LOGFILE`` checks that record N is still there with that MAC,
  which also catches a cut-off tail rewritten by a restarted writer.

Shared, as every service that audits writes here; the verifier (``imaging-platform audit
verify``) is the CLI's: services/cli/audit_verify.py. What both must agree on lives here: the
key and its derived MACs (:class:`AuditKey`), the one serialisation (:func:`canonical`), the
chain names (:data:`CHAIN_NAME`) and the checkpoint line (:class:`Checkpoint`).

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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

MIN_KEY_BYTES = 32

# Writer defaults: a checkpoint at least every 100 records or 300 s (checked when writing).
CHECKPOINT_RECORDS = 100
CHECKPOINT_SECONDS = 300.0

# Checkpoints go to the service log, never to the audit file they anchor.
_checkpoint_log = logging.getLogger("imaging.audit")
# A checkpoint line (Checkpoint.line) as the verifier finds it: anywhere in a line, so the log
# formatter's prefix does not matter.
CHECKPOINT_LINE = re.compile(
    rb"audit checkpoint chain=([A-Za-z0-9._:@-]{1,128}) seq=([1-9][0-9]{0,17}) "
    rb"mac=([0-9a-f]{64}) cmac=([0-9a-f]{64})(?![0-9a-f])"
)

AUDIT_LAST_SEQUENCE = Gauge(
    "imaging_audit_last_sequence",
    "Sequence number of the last audit record each chain wrote (compare with the file).",
    ["chain"],
)

# A chain's name: the verifier prints only names of this form (anything else in that field as
# a placeholder), so a forged line cannot put arbitrary text into its report.
CHAIN_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


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
    # Who sent the study when a trusted relay analysed it on their behalf (AnalyzeRequest.origin,
    # checked by the gateway): calling AE title and IP address; empty: the client is the origin.
    # ``client`` stays the relay that asserted it.
    origin_ae: str = ""
    origin_address: str = ""


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance the ingest received over DICOM (C-STORE), on the same trail as the
    gateway's calls: who sent it and what it was, never a value from inside it."""

    calling_ae: str  # checked against the AE VR at association
    peer: str  # the caller's IP address
    study_uid: str  # raw; only its pseudonym is written
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_sha256: str
    outcome: str  # stored, duplicate, conflict


def _received_fields(event: ReceivedInstance, key: AuditKey) -> dict[str, Any]:
    return {
        "method": "C-STORE",
        "client": f"dicom:{event.calling_ae}",
        "peer": event.peer,
        "study_uid_hmac": key.pseudonym(event.study_uid) if event.study_uid else "",
        "sop_class_uid": event.sop_class_uid,
        "transfer_syntax_uid": event.transfer_syntax_uid,
        "instance_sha256": [event.instance_sha256],
        "status": event.outcome,
    }


def canonical(record: dict[str, Any]) -> bytes:
    """The one serialisation that is MAC'd and written: the verifier rebuilds it byte for byte."""
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
        "origin_ae": event.origin_ae,
        "origin_address": event.origin_address,
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
        if not CHAIN_NAME.fullmatch(chain):
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
        if not CHAIN_NAME.fullmatch(self.chain):
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
            # A crash cut the last line short: end it, so it stays visible to the verifier as one
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

    def record(self, event: AuditEvent | ReceivedInstance) -> int:
        """Append ``event`` as the chain's next record; returns its seq."""
        with self._lock:
            seq = self._seq + 1
            record = {
                "chain": self.chain,
                "seq": seq,
                "time": _utc_now(),
                **(
                    _received_fields(event, self._key)
                    if isinstance(event, ReceivedInstance)
                    else _event_fields(event, self._key)
                ),
                "prev": self._prev,
            }
            record["mac"] = self._key.mac(canonical(record))
            self._write(canonical(record) + b"\n")
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
