"""``imaging-platform audit verify``: checks an audit file written by services/common/audit.py.

Every record's MAC, the chains (no record edited, removed, reordered or inserted) and the
anchors kept outside the file, which alone can prove its tail: the writer's last sequence
number (``--expect CHAIN=SEQ``, from the Prometheus gauge imaging_audit_last_sequence) and
the checkpoints the writer logs to the service log (``--checkpoints LOGFILE``), which also
catch a cut-off tail rewritten by a restarted writer.

``audit verify`` exits :data:`EXIT_OK` only when every chain's tail is anchored and matches.
Problems name line numbers, chains and seqs, never other field values.
"""

from __future__ import annotations

import hmac
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.audit import CHAIN_NAME, CHECKPOINT_LINE, AuditKey, Checkpoint, canonical

# `audit verify` exit codes (main_verify): scripts tell "tampered" from "cannot tell".
EXIT_OK = 0  # every chain intact and its tail anchored by --expect or a checkpoint
EXIT_TAMPERED = 1  # a broken chain, or a chain short of / different from an anchor
EXIT_ERROR = 2  # could not check at all (key, file, arguments)
EXIT_TAIL_UNVERIFIED = 3  # chains intact, but some chain's end is anchored by nothing
EXIT_NO_RECORDS = 4  # no audit record at all: an emptied or replaced file looks like this


def read_checkpoints(paths: Iterable[Path | str], key: AuditKey) -> tuple[list[Checkpoint], int]:
    """The checkpoints in log files whose cmac verifies, and how many lines failed to.

    Other lines are skipped unread, so a whole service log can be given as it is.
    """
    found: list[Checkpoint] = []
    ignored = 0
    for path in paths:
        with Path(path).open("rb") as f:
            for line in f:
                match = CHECKPOINT_LINE.search(line)
                if match is None:
                    continue
                chain, seq, mac = match[1].decode(), int(match[2]), match[3].decode()
                if hmac.compare_digest(key.checkpoint_mac(chain, seq, mac), match[4].decode()):
                    found.append(Checkpoint(chain, seq, mac))
                else:
                    ignored += 1
    return found, ignored


def _chain_label(value: object) -> str:
    if isinstance(value, str) and CHAIN_NAME.fullmatch(value):
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
        written, signed = canonical(record), canonical(body)
    except ValueError:
        return [f"{where}: holds a number JSON cannot represent (line edited)"]
    problems = []
    if written != line:
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
